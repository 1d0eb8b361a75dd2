"""The email bridge (a package, so nothing named `email` can shadow the standard library)."""
