"""Stage: bug reports as a regression suite. Parsing reports, verdicts, comments, the GitHub API."""
