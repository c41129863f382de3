"""CogPO preference pairs (stage ``03_pairs``): inputs, pair rules, response format, lengths, file schema."""
