"""The seed's three task models: classifier, detector and segmenter."""
