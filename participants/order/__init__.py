"""Sample service: orders. It starts the checkout transaction across wallet and
inventory, and is a participant of it too (the order itself is a branch)."""
