"""Species context for captions: Wikipedia visual descriptions and caption format examples.

``inputs`` reads the taxa to describe (a dataset's or a taxon list's); ``fetch`` (the Wikipedia
job: ``http``, ``wikipedia``, ``wikitext``, ``extract``, ``cache``) or ``offline`` (a file of
texts) writes the per-taxon ``table``; ``examples`` holds the format examples; ``lookup`` joins
both against records for the caption stage. Importing this package does not import Ray.

May import: ``data`` and the neutral top-level modules (config, storage).
"""

from biocap_ray.context.examples import DEFAULT_EXAMPLES, FormatExamples, parse_examples
from biocap_ray.context.lookup import ContextLookup, SpeciesContext

__all__ = ["DEFAULT_EXAMPLES", "ContextLookup", "FormatExamples", "SpeciesContext", "parse_examples"]
