"""The method in one page, with its equations."""

from __future__ import annotations

import streamlit as st

EQUATIONS = [
    ("Attention head", r"H^l = \mathrm{softmax}_{x,y}\left(W_H^l * Z^l\right)",
     "K maps per attended layer, each a distribution over the pixels: where each head looks."),
    ("Output head", r"o^l_k = \sum_{x,y} H^l_k \odot \left(W_{O,k}^l * Z^l\right)",
     "Each head's class hypothesis: class-score maps pooled by that head's attention map."),
    ("Confidence gate", r"g^l = \mathrm{softmax}_k\left(\tanh\left(\sum_{x,y} (W_g^l * Z^l)_k \odot H^l_k\right)\right)",
     "How much the module trusts each head for this image; the K weights sum to 1."),
    ("Module hypothesis", r"o^l = \sum_k g^l_k\, o^l_k", "The layer's answer: its heads mixed by their gates."),
    ("Global gate", r"g_O = \mathrm{softmax}\left(\tanh\left(\mathrm{BN}(W_G\,\mathrm{GAP}(Z^L))\right)\right)",
     "One weight per attended layer and one for the network's own output, read off the last feature map. "
     "tanh keeps every unit in [−1, 1], so no source can weigh more than e² ≈ 7.4 times another: with four "
     "sources (three attended layers and the network) a weight stays between 0.043 and 0.711. The same bound "
     "holds for the confidence gates over the K heads. The data-set page's Gate behaviour tab shows whether a "
     "trained model's gates respond to the image or sit at the bound."),
    ("Fusion", r"\mathrm{output} = g_{net}\log\mathrm{softmax}(o_{net}) + \sum_l g_O^l \log\mathrm{softmax}(o^l)",
     "The prediction is the argmax. When the network alone is wrong and the fused output is right, "
     "attention has rectified the prediction."),
    ("Test-time augmentation", r"\bar T = \tfrac{1}{|V|}\sum_{v \in V} v^{-1}\, T(v(x))",
     "Not part of the method: each checkpoint records the views V its validation figure was measured with: "
     "flip (the image and its mirror image), or flip-shift1 / flip-shift2 (both also moved by up to 1 or 2 "
     "pixels along each axis: 10 or 18 views). Every map, gate, hypothesis and fusion term shown is the mean "
     "over the views, each view's maps moved and flipped back (v⁻¹). Means keep gates and maps summing to 1 "
     "and the fusion terms summing to the output. The sidebar picks any of the augmentations, or none."),
]


def render():
    st.title("How Attend and Rectify works")
    st.markdown(
        "Rodríguez et al. (ECCV 2018) attach small **attention modules** to a CNN's intermediate feature maps. "
        "Each module proposes its own class hypothesis from a few attended regions; learned **gates** decide how "
        "much to trust each head and each module when the hypotheses are **fused** with the network's own output.")
    for title, latex, text in EQUATIONS:
        st.subheader(title)
        st.latex(latex)
        st.write(text)
