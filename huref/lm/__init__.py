"""Language models as text machines, shared by the zoo and FP-Vec: loading one to run it
(``load``), training it on a token stream and measuring its perplexity (``train``), and the local
training text (``corpus``). Nothing here knows about fingerprints or the zoo's recipes."""
