"""Output: the rows built once from a verdict, and the table, JSON and diagnosis views of them.
Reads no /proc and chooses no exit code."""
