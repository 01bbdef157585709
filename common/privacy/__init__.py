"""Privacy accounting, secret DP randomness, the hash-chained ledger and `fedssl audit`."""
