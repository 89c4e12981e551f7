"""A model zoo built on the CPU: bases, derivatives and disguised copies with ground truth."""
