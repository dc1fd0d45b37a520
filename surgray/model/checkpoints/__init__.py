"""Checkpoints and variants: which network a name or a file stands for, and loading it.

The official SAM2 / SAM2.1 variant table and the micro test network (`variants`), the
checkpoints shipped in the package (`shipped`), reading, strictly checking, saving and building
SAM2 networks (`sam2_checkpoint`), ReSurgSAM2 checkpoints in our layout and the released one
(`referring_checkpoint`, `resurgsam2_released`), and the loader that tells them apart
(`network_loading`). It sits on top of the other three concepts and may import all of them;
none of them imports it.
"""
