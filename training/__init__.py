"""Training as a library: the run config (config), the data order and loader (data), the model being trained
(modeling), the checkpoint format (checkpoint), one worker's recipe (recipe), the Ray Train worker loop (loop), the
driver (launch) and evaluation (evaluation). jobs/ only parses command lines and calls these."""
