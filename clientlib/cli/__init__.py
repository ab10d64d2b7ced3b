"""cachectl: the operator's command line, one module per command over library calls."""
