"""CLI subcommand groups, registered by vattcli.cli."""
