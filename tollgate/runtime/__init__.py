"""The state of one gateway process: the compiled config version behind one reference, swapped whole on reload."""
