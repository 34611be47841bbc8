"""The quick probes that can steer an allocation block by block (a sensitivity scan, the agent's measure
step), and the default among them.

kl is the default: on the embedded model (Wanda 50%, step 0.1) its per-block sensitivity ranking agreed
more across calibration seeds 0, 1 and 2 than perplexity's (Spearman 0.85/0.86/0.91 against
0.83/0.77/0.83 per seed pair; the least sensitive third of the blocks kept 80% of its members against
67%); the README has the table.
"""

SIGNALS = ("kl", "perplexity")  # both lower-is-better; both measured from cached block inputs in a scan
DEFAULT_SIGNAL = "kl"
