"""The `imgcls` command line: argparse -> API calls -> what is printed, and exit codes.

    main.py         the parser (one subcommand per job) and main(): how errors are printed
    train_flags.py  how each of train's settings is spelled as a flag
    commands.py     one handler per command: calls the library, prints, returns the status
No policy lives here; each handler imports its modules when it runs, so `imgcls scan` never
pays for importing torch.
"""

from imgcls.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
