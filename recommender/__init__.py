"""recommender: semantic related articles and search for news archives.

Importing the package is light: torch and the model load only when needed.
"""

__version__ = "0.1.0"
