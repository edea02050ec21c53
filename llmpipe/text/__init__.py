"""Text algorithms shared by stages: classifiers, normalisation, words."""
