"""Fuzzing of the ``.jac`` reader (see ``fuzz/README.md``)."""
