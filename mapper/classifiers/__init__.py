"""ImageNet-1k classifiers as embedding models: the 2020 paper's classification half."""
