"""Sample participant: an inventory. Try reserves stock, confirm consumes it,
cancel releases it."""
