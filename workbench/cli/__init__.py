"""The `workbench` command (`main`) and its headless subcommands, one module per command group."""
