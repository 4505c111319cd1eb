"""Bad inputs: every way a user can misuse ``letkd`` ends in one clean line, with nothing lost."""
