"""biocap_ray: the BioCAP recipe (BioCLIP with Captions) on Ray.

Stages live in sub-packages named after them, layered so that imports only point down:
``data`` and ``models`` at the bottom, then ``context``, ``caption``, ``evaluate``, ``train``,
``tune``; ``pipeline`` and ``cli`` call them. The neutral modules here (``config``, ``storage``,
``tracking``, ``runtime``, ``plots``) import no stage. Importing the package is cheap: torch,
Ray and vLLM are imported only by the modules that need them.
"""

__version__ = "0.1.0"
