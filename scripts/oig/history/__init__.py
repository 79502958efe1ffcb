"""``oig history``: a static site of every training run, read from the repository's own git history.

``site`` reads the history (every commit that changed training_log or model.yaml on a branch, parsed with
``oig.runlog``'s readers; the slices each run used, read at the commit it trained from); ``charts`` draws
inline SVG; ``render`` writes the pages (index, one page a run, bugs, slices) into a folder that replaces
the old site atomically. The pages load nothing from anywhere: no script, no CDN, one inline style
allowed by its hash in a strict Content-Security-Policy, and every text that came from a training_log,
a slice or a model's answer is escaped.
"""
