"""Command-line interface (typer). Each *_cmd module registers a group of commands."""


def main() -> None:
    from casbak.cli.main import main as run

    run()
