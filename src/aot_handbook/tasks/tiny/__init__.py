"""The tiny offline tasks: 2-digit addition (:mod:`.arithmetic`, task ``tiny``), its two-attribute variant
(:mod:`.multi`, task ``tiny_multi``) and its graded regime (:mod:`.graded`, task ``tiny_graded``: the chosen answer
is better, never right). Importing this package registers all three (:mod:`aot_handbook.tasks`)."""

from . import arithmetic, graded, multi  # noqa: F401  (each registers its task on import)
