"""Sample participant: a wallet. Try freezes money, confirm pays it to the payee,
cancel releases it."""
