"""Species context for captions: Wikipedia visual descriptions and caption format examples.

``build`` turns a dataset's taxa (or an offline file of descriptions) into a per-taxon
context table; ``lookup`` joins that table and the format examples against records
for the caption stage. Importing this package does not import Ray.
"""

from biocap_ray.context.examples import DEFAULT_EXAMPLES, FormatExamples, parse_examples
from biocap_ray.context.lookup import ContextLookup, SpeciesContext

__all__ = ["DEFAULT_EXAMPLES", "ContextLookup", "FormatExamples", "SpeciesContext", "parse_examples"]
