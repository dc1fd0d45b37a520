"""Video decode/encode, mask codecs and exports."""
