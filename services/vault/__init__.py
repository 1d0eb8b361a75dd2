"""The vault: credentials, rules and the HTTPS gateway every agent container talks through."""
