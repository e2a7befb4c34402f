"""Looking at a run: the viser 4D viewer (`viewer`), overlay videos and per-frame maps (`video`), the
summary picture `st4r adapt` writes (`summary`), colour maps (`colormaps`) and the run data they share
(`data`). Heavy imports (viser, av, cv2) happen inside functions."""
