"""KD-Loss (Fard & Mahoor): the method."""
