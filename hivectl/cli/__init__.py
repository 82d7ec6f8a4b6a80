"""hivectl: the operator command line (Typer + rich), one module per noun."""
