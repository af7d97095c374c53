"""Rendering: tensors -> uint8 pictures (images.py) and plotly figures (figures.py). Nothing here writes."""
