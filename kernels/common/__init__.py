"""Stages shared by the chunkwise kernels of the delta-rule family, one concern per file.

``tiles.py`` tile loads/stores and coordinates; ``wy.py`` the WY representation (UT transform) and its backward;
``chunk_h.py`` the state walk forward and backward; ``chunk_o.py`` outputs and chunk-local gradients; ``launch.py``
the settings object, block sizes, grids and the launch; ``utils.py`` input validation and varlen indices.
"""
