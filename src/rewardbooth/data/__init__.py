"""What a user gives: subject photos and prompts (`images`), several subjects in one run (`concepts`), and the
DreamBench subjects and prompt lists (`dreambench`). The I/O edge for images: PIL stops here.
"""
