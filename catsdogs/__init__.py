"""Facts shared by every stage of the project: see catsdogs/contract.py."""
