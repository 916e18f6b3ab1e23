"""`python -m vidact` runs the command-line interface."""

from vidact.cli import main

if __name__ == "__main__":
    main()
