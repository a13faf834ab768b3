"""Developer tools that write parts of the docs from the code (not shipped in the images)."""
