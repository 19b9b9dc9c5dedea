"""biocap_ray: the BioCAP recipe (BioCLIP with Captions) on Ray.

Stages live in sub-packages named after them (``data``, ...). Importing the package
is cheap: torch, Ray and vLLM are imported only by the modules that need them.
"""

__version__ = "0.1.0"
