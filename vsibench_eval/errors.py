"""The error every check of the user's input raises: its message names the file, row and field at fault."""


class DataError(ValueError):
    """Bad input: the message names the file, the row id and the column."""
