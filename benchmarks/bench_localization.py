"""Localization benchmark: do the heatmaps point at the expert boxes better than no model at all?

Data: a folder dataset with images/, labels.csv (image, abnormal, patient_id, ...) and
bboxes.csv (image, finding, x, y, w, h in image pixels), e.g. nih-cxr-1000 (1,000 images,
49 expert boxes on 44 images of 29 patients).

Protocol
  * Every patient with an expert box is held out of training (all their images: 77 on
    nih-cxr-1000, all abnormal). The 44 boxed images are the localization set.
  * The other patients are split by patient, stratified by label (stage 4's
    stratified_group_split, split seed 0, fixed): 15 % "test-rest", then 10 % of the remainder
    "validation" (early stopping: lowest validation loss), the rest "train".
  * Test set for AUROC = the boxed patients' images + test-rest, so both classes are present
    (the boxed patients alone are all abnormal). AUROC's 95 % CI resamples patients
    (learning.metrics.grouped_bootstrap_auc).
  * Each configuration trains a head (learning.fully_connected_layers_training.train_head, the
    code stage 5 runs) on cached VGG16 features (real ImageNet weights; the features of stage 3)
    and explains the 44 boxed images with one or more attribution methods. Maps are resized to
    224 x 224 and scored with learning.localization: pointing game, inside share (positive
    attribution inside the boxes / all positive attribution), IoBB@0.5; each mean with a 95 %
    percentile bootstrap CI over the 44 images (localization.bootstrap_ci).
  * Baselines with no model, scored the same way: the centred Gaussian and the lung-field prior
    (localization.lung_prior_map, fixed a priori). A third control uses the model but no
    per-image information: the mean of the configuration's own maps of the 44 images (each
    positive part scaled to max 1), shown for every image (issue 21; the same control and the
    same verdict code as stage 6, learning/explain/verdict.py). "localizes" only when the map
    beats all three on pointing and inside share (paired 95% CIs above 0).
  * Maps marked "x lung prior" are ANATOMICALLY CONSTRAINED: the model's map multiplied by the
    lung-field prior. They are reported next to the unconstrained map, never instead of it.
  * Screening runs one seed; the finalists run >= 3 seeds (mean and spread). The 44 images are
    a development set: configurations are chosen on aggregate numbers only.

Feature caches (in <cache>, never in the repository): b4p-224.pickle (stage-3 block4_pool
features, computed with the given weights when missing), b5c3-224.pickle (frozen ImageNet
block5_conv3 computed from b4p: the v1 features block5_pool are its 2x2 max pool).
Results are appended to <cache>/bench-localization.jsonl (one line per configuration, seed and
method); a run skips what is already there, so the benchmark can be run in pieces.

Example (screen, then confirm):
    python benchmarks/bench_localization.py ../shared/datasets/nih-cxr-1000 vgg16-imagenet.h5 \
        feature-cache --configs v1,cam,block5 --seeds 0
    python benchmarks/bench_localization.py ../shared/datasets/nih-cxr-1000 vgg16-imagenet.h5 \
        feature-cache --configs block5-aug --seeds 0,1,2 --report

MEASURED (real ImageNet weights, nih-cxr-1000, 2 shared CPU cores, November 2026)
Split: train 707, validation 78, test 215 (77 boxed-patient images + 138 others, both classes).
Baselines on the 44 boxed images (224 px; boxes cover 0.087 of the image), no model:
  centred Gaussian        pointing 0.159 [0.07, 0.27]  inside 0.150 [0.11, 0.20]  IoBB 0.225
  lung-field prior        pointing 0.409 [0.27, 0.55]  inside 0.227 [0.18, 0.29]  IoBB 0.312
  uniform inside ring 1/2/3 (what the ring mask alone gives): inside 0.118 / 0.163 / 0.214
v1 for reference (issue 10's measurement, same protocol): block5_pool, flatten-dense head,
DeepLIFT pointing 0.045, inside 0.075; Grad-CAM 0.114 / 0.157; AUROC 0.897 [0.816, 0.960].
Configurations (features, head preset, overrides; see CONFIGS): cam = 1x1 conv + GAP head on
block4_pool; -aug = grid flips/shifts (shift 1 cell, -s2: 2 cells) + ring mask 1 (-r2, -r3: 2,
3 cells); -small = 32 filters, dropout 0.5; cam-b5c3 = cam head on frozen ImageNet
block5_conv3; block5-* = fine-tuned block5 (ImageNet init; in the table b5-r3-3e-5 =
block5-aug-r3, Adam 3e-5, and b5-r3-1e-5 = block5-aug-r3-lr1e-5). "xPRIOR" = the map multiplied
by the lung-field prior (ANATOMICALLY CONSTRAINED, not evidence from the image). "ens" = mean
of the 3 seeds' maps (each scaled to max 1). "inside - prior" = paired per-image difference of
inside shares, map minus lung prior, with its bootstrap CI (only for runs after it was added).
IoBB = IoBB@0.5 mean. AUROC = test AUROC (CIs in the results file, ~+-0.04).

  config / method / seed         AUROC pointing [CI]   inside [CI]     IoBB  inside - prior
  cam/grad-cam/0                 0.924 0.136 [.05,.23] 0.132 [.10,.17] 0.117 -
  cam/grad-cam xPRIOR/0          0.924 0.477 [.32,.64] 0.281 [.22,.34] 0.404 -
  cam/grad-cam++/0               0.924 0.114 [.02,.20] 0.102 [.08,.13] 0.099 -
  cam/grad-cam++ xPRIOR/0        0.924 0.409 [.25,.57] 0.256 [.20,.31] 0.377 -
  cam/occlusion-grid/0           0.924 0.136 [.05,.23] 0.138 [.10,.18] 0.118 -
  cam/occlusion-grid xPRIOR/0    0.924 0.455 [.30,.61] 0.285 [.22,.35] 0.403 -
  cam-aug/grad-cam/0             0.922 0.318 [.18,.45] 0.174 [.13,.23] 0.214 -
  cam-aug/grad-cam/1             0.921 0.295 [.18,.43] 0.176 [.13,.23] 0.227 -
  cam-aug/grad-cam/2             0.920 0.273 [.14,.41] 0.172 [.13,.22] 0.215 -
  cam-aug/grad-cam xPRIOR/0      0.922 0.432 [.27,.59] 0.287 [.22,.35] 0.398 -
  cam-aug/grad-cam xPRIOR/1      0.921 0.432 [.30,.57] 0.286 [.22,.36] 0.390 -
  cam-aug/grad-cam xPRIOR/2      0.920 0.432 [.27,.59] 0.287 [.22,.36] 0.398 -
  cam-aug/grad-cam++/0           0.922 0.273 [.14,.41] 0.140 [.10,.18] 0.190 -
  cam-aug/grad-cam++/1           0.921 0.250 [.11,.39] 0.135 [.10,.17] 0.185 -
  cam-aug/grad-cam++/2           0.920 0.250 [.14,.39] 0.138 [.10,.18] 0.185 -
  cam-aug/grad-cam++ xPRIOR/0    0.922 0.432 [.30,.59] 0.263 [.21,.32] 0.383 -
  cam-aug/grad-cam++ xPRIOR/1    0.921 0.432 [.30,.57] 0.257 [.20,.32] 0.369 -
  cam-aug/grad-cam++ xPRIOR/2    0.920 0.409 [.27,.57] 0.263 [.21,.32] 0.392 -
  cam-aug/DL-black/0             0.922 0.114 [.02,.20] 0.123 [.09,.16] 0.128 -
  cam-aug/DL-black xPRIOR/0      0.922 0.364 [.23,.50] 0.255 [.20,.31] 0.425 -
  cam-ring/grad-cam/0            0.921 0.250 [.11,.39] 0.156 [.11,.20] 0.174 -
  cam-ring/grad-cam xPRIOR/0     0.921 0.455 [.30,.61] 0.279 [.22,.34] 0.377 -
  cam-ring/grad-cam++/0          0.921 0.205 [.09,.32] 0.121 [.09,.15] 0.116 -
  cam-ring/grad-cam++ xPRIOR/0   0.921 0.477 [.32,.61] 0.251 [.20,.31] 0.352 -
  cam-ring/DL-black/0            0.921 0.068 [.00,.14] 0.116 [.08,.15] 0.111 -
  cam-ring/DL-black xPRIOR/0     0.921 0.386 [.25,.55] 0.250 [.20,.31] 0.425 -
  cam-b5c3/grad-cam/0            0.908 0.091 [.02,.18] 0.133 [.09,.18] 0.136 -
  cam-b5c3/grad-cam xPRIOR/0     0.908 0.432 [.30,.57] 0.267 [.20,.34] 0.366 -
  cam-b5c3/grad-cam++/0          0.908 0.068 [.00,.14] 0.109 [.08,.14] 0.137 -
  cam-b5c3/grad-cam++ xPRIOR/0   0.908 0.409 [.27,.57] 0.251 [.20,.31] 0.366 -
  cam-b5c3/DL-black/0            0.908 0.068 [.00,.16] 0.098 [.07,.13] 0.094 -
  cam-b5c3/DL-black xPRIOR/0     0.908 0.477 [.34,.61] 0.245 [.19,.31] 0.436 -
  cam-aug-s2/grad-cam/0          0.926 0.227 [.09,.36] 0.181 [.13,.23] 0.236 -
  cam-aug-s2/grad-cam xPRIOR/0   0.926 0.432 [.27,.59] 0.294 [.23,.36] 0.405 -
  cam-aug-s2/grad-cam++/0        0.926 0.205 [.09,.32] 0.144 [.11,.18] 0.212 -
  cam-aug-s2/grad-cam++ xPRIOR/0 0.926 0.409 [.25,.57] 0.266 [.21,.33] 0.388 -
  cam-aug-r2/grad-cam/0          0.920 0.250 [.14,.36] 0.225 [.17,.29] 0.264 -
  cam-aug-r2/grad-cam/1          0.919 0.273 [.16,.41] 0.227 [.17,.29] 0.272 +0.00 [-.03,+.03]
  cam-aug-r2/grad-cam/2          0.909 0.273 [.16,.41] 0.225 [.17,.29] 0.274 -0.00 [-.03,+.03]
  cam-aug-r2/grad-cam xPRIOR/0   0.920 0.432 [.27,.59] 0.306 [.24,.38] 0.402 -
  cam-aug-r2/grad-cam xPRIOR/1   0.919 0.409 [.27,.55] 0.305 [.24,.38] 0.396 +0.08 [+.03,+.12]
  cam-aug-r2/grad-cam xPRIOR/2   0.909 0.409 [.25,.57] 0.305 [.24,.38] 0.402 +0.08 [+.04,+.12]
  cam-aug-r2/grad-cam++/0        0.920 0.227 [.11,.34] 0.188 [.14,.24] 0.247 -
  cam-aug-r2/grad-cam++/1        0.919 0.227 [.11,.34] 0.184 [.14,.23] 0.242 -0.04 [-.06,-.02]
  cam-aug-r2/grad-cam++/2        0.909 0.250 [.14,.39] 0.190 [.14,.24] 0.258 -0.04 [-.06,-.02]
  cam-aug-r2/grad-cam++ xPRIOR/0 0.920 0.432 [.27,.59] 0.276 [.22,.34] 0.386 -
  cam-aug-r2/grad-cam++ xPRIOR/1 0.919 0.409 [.27,.55] 0.272 [.22,.33] 0.375 +0.04 [+.02,+.06]
  cam-aug-r2/grad-cam++ xPRIOR/2 0.909 0.409 [.25,.57] 0.278 [.22,.34] 0.393 +0.05 [+.03,+.08]
  cam-aug-r2s2/grad-cam/0        0.922 0.364 [.20,.50] 0.230 [.17,.29] 0.306 -
  cam-aug-r2s2/grad-cam/1        0.922 0.318 [.20,.48] 0.234 [.18,.30] 0.315 +0.01 [-.03,+.04]
  cam-aug-r2s2/grad-cam/2        0.899 0.341 [.20,.48] 0.232 [.17,.30] 0.292 +0.00 [-.03,+.04]
  cam-aug-r2s2/grad-cam xPRIOR/0 0.922 0.455 [.30,.61] 0.314 [.24,.39] 0.420 -
  cam-aug-r2s2/grad-cam xPRIOR/1 0.922 0.432 [.30,.57] 0.312 [.24,.39] 0.417 +0.08 [+.04,+.13]
  cam-aug-r2s2/grad-cam xPRIOR/2 0.899 0.432 [.27,.59] 0.314 [.25,.39] 0.406 +0.09 [+.04,+.14]
  cam-aug-r2s2/grad-cam++/0      0.922 0.341 [.20,.48] 0.192 [.14,.24] 0.284 -
  cam-aug-r2s2/grad-cam++/1      0.922 0.318 [.18,.45] 0.195 [.15,.25] 0.289 -0.03 [-.05,-.01]
  cam-aug-r2s2/grad-cam++/2      0.899 0.295 [.16,.43] 0.187 [.14,.24] 0.259 -0.04 [-.06,-.02]
  cam-aug-r2s2/grad-cam++ xPRIOR/00.922 0.455 [.30,.61] 0.280 [.22,.34] 0.400 -
  cam-aug-r2s2/grad-cam++ xPRIOR/10.922 0.432 [.30,.57] 0.280 [.22,.34] 0.399 +0.05 [+.03,+.07]
  cam-aug-r2s2/grad-cam++ xPRIOR/20.899 0.455 [.30,.61] 0.276 [.22,.34] 0.389 +0.05 [+.03,+.07]
  cam-aug-small/grad-cam/0       0.923 0.182 [.07,.30] 0.171 [.12,.22] 0.222 -
  cam-aug-small/grad-cam xPRIOR/00.923 0.455 [.30,.61] 0.282 [.22,.35] 0.383 -
  cam-aug-small/grad-cam++/0     0.923 0.159 [.05,.30] 0.152 [.11,.20] 0.212 -
  cam-aug-small/grad-cam++ xPRIOR/00.923 0.455 [.30,.61] 0.271 [.21,.33] 0.381 -
  cam-aug/grad-cam ens/0+1+2     0.923 0.295 [.16,.43] 0.174 [.12,.23] 0.219 -
  cam-aug/grad-cam++ ens/0+1+2   0.923 0.273 [.14,.41] 0.138 [.10,.18] 0.189 -
  cam-aug-r3/grad-cam/0          0.919 0.318 [.18,.45] 0.264 [.20,.33] 0.328 +0.04 [-.00,+.07]
  cam-aug-r3/grad-cam/1          0.912 0.364 [.23,.52] 0.280 [.21,.35] 0.351 +0.05 [+.01,+.09]
  cam-aug-r3/grad-cam/2          0.904 0.341 [.20,.50] 0.269 [.20,.34] 0.338 +0.04 [+.01,+.08]
  cam-aug-r3/grad-cam xPRIOR/0   0.919 0.477 [.32,.61] 0.326 [.25,.40] 0.410 +0.10 [+.05,+.14]
  cam-aug-r3/grad-cam xPRIOR/1   0.912 0.432 [.30,.57] 0.336 [.26,.41] 0.434 +0.11 [+.06,+.16]
  cam-aug-r3/grad-cam xPRIOR/2   0.904 0.432 [.27,.59] 0.328 [.25,.41] 0.420 +0.10 [+.06,+.15]
  cam-aug-r3/grad-cam++/0        0.919 0.409 [.27,.55] 0.236 [.18,.30] 0.300 +0.01 [-.01,+.03]
  cam-aug-r3/grad-cam++/1        0.912 0.341 [.20,.50] 0.239 [.18,.30] 0.318 +0.01 [-.01,+.03]
  cam-aug-r3/grad-cam++/2        0.904 0.386 [.25,.52] 0.241 [.18,.31] 0.317 +0.01 [-.01,+.04]
  cam-aug-r3/grad-cam++ xPRIOR/0 0.919 0.432 [.27,.59] 0.296 [.24,.36] 0.379 +0.07 [+.05,+.09]
  cam-aug-r3/grad-cam++ xPRIOR/1 0.912 0.455 [.32,.59] 0.299 [.24,.37] 0.394 +0.07 [+.05,+.09]
  cam-aug-r3/grad-cam++ xPRIOR/2 0.904 0.455 [.30,.61] 0.302 [.24,.37] 0.403 +0.07 [+.05,+.10]
  cam-aug-r3s2/grad-cam/0        0.913 0.386 [.23,.52] 0.264 [.20,.33] 0.351 +0.04 [-.00,+.07]
  cam-aug-r3s2/grad-cam xPRIOR/0 0.913 0.523 [.36,.66] 0.331 [.26,.41] 0.451 +0.10 [+.06,+.15]
  cam-aug-r3s2/grad-cam++/0      0.913 0.432 [.27,.59] 0.236 [.18,.30] 0.303 +0.01 [-.01,+.03]
  cam-aug-r3s2/grad-cam++ xPRIOR/00.913 0.500 [.34,.64] 0.298 [.24,.36] 0.399 +0.07 [+.05,+.09]
  cam-aug-r2s2/grad-cam ens/0+1+20.919 0.318 [.18,.45] 0.232 [.17,.30] 0.306 +0.01 [-.03,+.04]
  cam-aug-r2s2/grad-cam++ ens/0+1+20.919 0.295 [.16,.43] 0.191 [.14,.24] 0.279 -0.04 [-.06,-.02]
  cam-aug-r3/grad-cam ens/0+1+2  0.914 0.318 [.18,.45] 0.271 [.21,.34] 0.341 +0.04 [+.00,+.08]
  cam-aug-r3/grad-cam++ ens/0+1+20.914 0.386 [.25,.55] 0.239 [.18,.30] 0.315 +0.01 [-.01,+.03]
  cam-aug-r3/DL-black/0          0.919 0.250 [.14,.39] 0.195 [.14,.25] 0.206 -0.03 [-.05,-.02]
  cam-aug-r3/DL-black/1          0.912 0.205 [.09,.32] 0.204 [.15,.26] 0.226 -0.02 [-.04,-.01]
  cam-aug-r3/DL-black/2          0.904 0.227 [.11,.36] 0.202 [.15,.26] 0.226 -0.02 [-.04,-.01]
  cam-aug-r3/DL-black xPRIOR/0   0.919 0.500 [.36,.66] 0.275 [.22,.34] 0.399 +0.05 [+.04,+.06]
  cam-aug-r3/DL-black xPRIOR/1   0.912 0.432 [.29,.59] 0.284 [.23,.34] 0.420 +0.06 [+.04,+.07]
  cam-aug-r3/DL-black xPRIOR/2   0.904 0.523 [.36,.66] 0.283 [.22,.35] 0.424 +0.06 [+.04,+.07]
  cam-aug-r3/DL-blur/0           0.919 0.250 [.14,.39] 0.178 [.13,.23] 0.232 -0.05 [-.07,-.03]
  cam-aug-r3/DL-blur xPRIOR/0    0.919 0.341 [.20,.48] 0.252 [.20,.32] 0.328 +0.02 [+.00,+.04]
  b5-r3-3e-5/grad-cam/0          0.803 0.136 [.05,.25] 0.098 [.06,.14] 0.103 -0.13 [-.17,-.09]
  b5-r3-3e-5/grad-cam xPRIOR/0   0.803 0.409 [.25,.55] 0.260 [.19,.34] 0.372 +0.03 [-.02,+.08]
  b5-r3-3e-5/grad-cam++/0        0.803 0.023 [.00,.07] 0.059 [.04,.08] 0.027 -0.17 [-.21,-.13]
  b5-r3-3e-5/grad-cam++ xPRIOR/0 0.803 0.386 [.25,.55] 0.229 [.18,.29] 0.379 +0.00 [-.03,+.03]
  cam-aug-r3/IG/0                0.919 0.250 [.11,.39] 0.201 [.15,.26] 0.243 -0.03 [-.04,-.01]
  cam-aug-r3/IG xPRIOR/0         0.919 0.500 [.36,.64] 0.280 [.22,.34] 0.461 +0.05 [+.04,+.06]
  cam-aug-r3/DL-mean/0           0.919 0.205 [.09,.34] 0.179 [.12,.24] 0.190 -0.05 [-.07,-.02]
  cam-aug-r3/DL-mean xPRIOR/0    0.919 0.273 [.14,.41] 0.241 [.18,.31] 0.261 +0.01 [-.01,+.04]
  b5-r3-1e-5/grad-cam/0          0.886 0.318 [.18,.45] 0.183 [.13,.24] 0.266 -0.04 [-.08,-.01]
  b5-r3-1e-5/grad-cam xPRIOR/0   0.886 0.455 [.30,.59] 0.307 [.23,.39] 0.423 +0.08 [+.03,+.13]
  b5-r3-1e-5/grad-cam++/0        0.886 0.386 [.25,.52] 0.124 [.09,.16] 0.227 -0.10 [-.13,-.07]
  b5-r3-1e-5/grad-cam++ xPRIOR/0 0.886 0.477 [.32,.61] 0.281 [.22,.34] 0.428 +0.05 [+.03,+.08]

  mean +- sd over 3 seeds
  cam-aug/grad-cam              AUROC 0.921+-0.001  pointing 0.295+-0.019  inside 0.174+-0.002
  cam-aug/grad-cam xPRIOR       AUROC 0.921+-0.001  pointing 0.432+-0.000  inside 0.286+-0.000
  cam-aug/grad-cam++            AUROC 0.921+-0.001  pointing 0.258+-0.011  inside 0.138+-0.002
  cam-aug/grad-cam++ xPRIOR     AUROC 0.921+-0.001  pointing 0.424+-0.011  inside 0.261+-0.003
  cam-aug-r2/grad-cam           AUROC 0.916+-0.005  pointing 0.265+-0.011  inside 0.226+-0.001
  cam-aug-r2/grad-cam xPRIOR    AUROC 0.916+-0.005  pointing 0.417+-0.011  inside 0.306+-0.001
  cam-aug-r2/grad-cam++         AUROC 0.916+-0.005  pointing 0.235+-0.011  inside 0.188+-0.003
  cam-aug-r2/grad-cam++ xPRIOR  AUROC 0.916+-0.005  pointing 0.417+-0.011  inside 0.275+-0.003
  cam-aug-r2s2/grad-cam         AUROC 0.914+-0.010  pointing 0.341+-0.019  inside 0.232+-0.002
  cam-aug-r2s2/grad-cam xPRIOR  AUROC 0.914+-0.010  pointing 0.439+-0.011  inside 0.313+-0.001
  cam-aug-r2s2/grad-cam++       AUROC 0.914+-0.010  pointing 0.318+-0.019  inside 0.192+-0.003
  cam-aug-r2s2/grad-cam++ xPRIOR AUROC 0.914+-0.010  pointing 0.447+-0.011  inside 0.278+-0.002
  cam-aug-r3/grad-cam           AUROC 0.912+-0.006  pointing 0.341+-0.019  inside 0.271+-0.006
  cam-aug-r3/grad-cam xPRIOR    AUROC 0.912+-0.006  pointing 0.447+-0.021  inside 0.330+-0.004
  cam-aug-r3/grad-cam++         AUROC 0.912+-0.006  pointing 0.379+-0.028  inside 0.239+-0.002
  cam-aug-r3/grad-cam++ xPRIOR  AUROC 0.912+-0.006  pointing 0.447+-0.011  inside 0.299+-0.002
  cam-aug-r3/DL-black           AUROC 0.912+-0.006  pointing 0.227+-0.019  inside 0.201+-0.004
  cam-aug-r3/DL-black xPRIOR    AUROC 0.912+-0.006  pointing 0.485+-0.039  inside 0.281+-0.004

Conclusions. (1) Regularising against shortcuts is what helped: the ring mask (thorax crop of
the feature grid) and grid flips/shifts took Grad-CAM from pointing 0.14 / inside 0.13 (cam) to
0.34 / 0.27 (cam-aug-r3, 3 seeds), at unchanged AUROC (0.91-0.92). (2) Grad-CAM on the head's
conv beats pixel methods on the same head (seed 0: DeepLIFT black / blur / mean pointing 0.25 /
0.25 / 0.21, inside 0.20 / 0.18 / 0.18; IG 0.25 / 0.20; DeepLIFT black over 3 seeds 0.227 /
0.201; completeness error <= 7e-6), all far above v1. Grad-CAM++ trades inside share for
pointing. Seed ensembles did not help (cam-aug-r3: 0.318 / 0.271, seed mean 0.341 / 0.271).
(3) No unconstrained configuration beats the lung-
field prior on the pointing game; cam-aug-r3's inside share beats it by +0.04 (paired CI above
0 for 2 of 3 seeds), but a flat map over the same unmasked centre already gets 0.214. (4) Fine-
tuning block5 could not be run properly here (~2 min per epoch on the shared CPU): at Adam 3e-5
it stopped at epoch 5 (patience 3) with AUROC 0.80; at 1e-5 it was still improving when the
10-epoch cap ended it (AUROC 0.886, Grad-CAM 0.318 / 0.183): one seed each, undertrained, so no
verdict; the GPU probe of the design notes (0.386 / 0.204 at AUROC 0.90) is the better
reference. (5) 448 px (cam-aug-r3-448: block4_pool 28x28, ring 6 and shift 2 cells of that
grid, i.e. the same image fractions), 3 seeds, mean +- sd: AUROC 0.881 +- 0.012, Grad-CAM
pointing 0.235 +- 0.011, inside 0.263 +- 0.002, IoBB 0.295; Grad-CAM++ 0.242 / 0.236; x PRIOR
0.379 / 0.317. Paired vs the prior, every seed: pointing -0.16 to -0.18 (CI below 0), inside
+0.03 to +0.04 (CI touching 0). So 448 px is no better than 224 px on localization and worse on
AUROC, at 4x the feature cost (stage 3 took 22 min for 1,000 images here vs 3 min at 224).
Not run for lack of CPU: LSE pooling, block5 with more seeds and epochs.
Default chosen: cam-aug-r3 with Grad-CAM at 224 px (the "cam" preset).

THE THIRD CONTROL (issue 21; measured December 2026, declared before running: the default
"cam" preset with Grad-CAM, seeds 0, 1, 2, nothing chosen on it). The mean of the default's own
maps of the 44 images (each scaled to max 1), shown for every image, scores pointing 0.227 /
0.386 / 0.227 and inside share 0.219 / 0.227 / 0.223. Paired differences, maps minus their own
mean map: pointing +0.091 [-0.045, +0.227] / -0.023 [-0.205, +0.159] / +0.114 [-0.023, +0.250];
inside share +0.045 [+0.013, +0.075] / +0.053 [+0.015, +0.088] / +0.046 [+0.013, +0.079]. So on
these 44 images the per-image maps carry a little per-image information in where their mass
lies (inside share beats the mean map, CI above 0 for every seed), none that the pointing game
can show, and the verdict for every seed is "does not localize" (pointing does not beat the
lung prior nor the mean map). The same holds for the maps multiplied by the lung prior.
"""
import argparse
import csv
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from learning import safe_pickle  # noqa: E402
from learning.explain import localization, verdict  # noqa: E402
from learning.head import PRESETS, block5_weights  # noqa: E402
from learning.learning_examples_preparing import (  # noqa: E402
    load_features, stratified_group_split)
from learning.metrics import grouped_bootstrap_auc, roc_auc  # noqa: E402
from scraper.cli import UserError, elapsed_since, exit_with, log  # noqa: E402
from scraper.fileio import atomic_write_json  # noqa: E402

MAP_SIZE = 224
# name -> (features, head preset, overrides of the preset). Features: "b4p" = block4_pool
# (14x14x512), "b5p" = block5_pool (7x7x512, v1), "b5c3" = frozen block5_conv3 (14x14x512).
CONFIGS = {
    "v1": ("b5p", "default", {}),
    "cam-b5c3": ("b5c3", "cam", {}),
    "cam": ("b4p", "cam", {}),
    "cam-aug": ("b4p", "cam", {"grid_augment": True, "ring_mask": True}),
    "cam-ring": ("b4p", "cam", {"ring_mask": True}),
    "cam-aug-s2": ("b4p", "cam", {"grid_augment": True, "ring_mask": 1, "grid_shift": 2}),
    "cam-aug-r2": ("b4p", "cam", {"grid_augment": True, "ring_mask": 2}),
    "cam-aug-r3": ("b4p", "cam", {"grid_augment": True, "ring_mask": 3}),
    "cam-aug-r3s2": ("b4p", "cam", {"grid_augment": True, "ring_mask": 3, "grid_shift": 2}),
    "cam-r2": ("b4p", "cam", {"ring_mask": 2}),
    "cam-aug-r2s2": ("b4p", "cam", {"grid_augment": True, "ring_mask": 2, "grid_shift": 2}),
    "cam-aug-small": ("b4p", "cam", {"grid_augment": True, "ring_mask": 1, "hidden": 32,
                                     "dropout": 0.5}),
    # 448 px input: block4_pool is a 28x28 grid (ring and shift scale with it); grid methods only.
    "cam-aug-r3-448": ("b4p448", "cam", {"grid_augment": True, "ring_mask": 3}),
    "block5-aug-r3": ("b4p", "block5", {"grid_augment": True, "ring_mask": 3, "epochs": 10,
                                        "patience": 3}),
    "block5-aug-r3-lr1e-5": ("b4p", "block5", {"grid_augment": True, "ring_mask": 3,
                                               "epochs": 10, "patience": 4,
                                               "learning_rate": 1e-5}),
    "block5": ("b4p", "block5", {}),
    "block5-aug": ("b4p", "block5", {"grid_augment": True, "ring_mask": True}),
    "block5-ring": ("b4p", "block5", {"ring_mask": True}),
}
# Methods: grad-cam / grad-cam++ on the last conv (in the head, or block5_conv3 for v1),
# occlusion-grid (one feature-grid cell set to zero at a time), deeplift-{black,blur,mean} and
# integrated-gradients on the full pixels -> logits model (learning.attribution, as stage 6).
METHODS = ("grad-cam", "grad-cam++", "occlusion-grid", "deeplift-black", "deeplift-blur",
           "deeplift-mean", "integrated-gradients")
DEFAULT_METHODS = "grad-cam,deeplift-black"


# ----------------------------------------------------------------------------- data

def read_dataset(dataset):
    """(rows of labels.csv, {image: [boxes in image pixels]})."""
    with open(os.path.join(dataset, "labels.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    boxes = {}
    with open(os.path.join(dataset, "bboxes.csv"), newline="") as handle:
        for row in csv.DictReader(handle):
            boxes.setdefault(row["image"], []).append(
                {"finding": row["finding"], **{k: float(row[k]) for k in "xywh"}})
    return rows, boxes


def make_split(rows, boxed_images, seed=0, test_fraction=0.15, validation_fraction=0.1):
    """{image: "boxed" | "test-rest" | "validation" | "train"}, all by patient (see docstring)."""
    boxed_patients = {r["patient_id"] for r in rows if r["image"] in boxed_images}
    rest = [r for r in rows if r["patient_id"] not in boxed_patients]
    labels = np.array([int(r["abnormal"]) for r in rest])
    groups = [r["patient_id"] for r in rest]
    test = stratified_group_split(labels, groups, test_fraction, seed)
    keep = np.flatnonzero(~test)
    validation = stratified_group_split(labels[keep], [groups[i] for i in keep],
                                        validation_fraction, seed + 1)
    part = {r["image"]: "boxed" for r in rows if r["patient_id"] in boxed_patients}
    for i, r in enumerate(rest):
        part[r["image"]] = "test-rest" if test[i] else "train"
    for i in keep[validation]:
        part[rest[i]["image"]] = "validation"
    return part


def feature_cache(dataset, weights, cache, size=MAP_SIZE):
    """{"b4p": (names, (N, 14, 14, 512)), "b5c3": ..., "b5p": ...} from / into the cache."""
    b4p_path = os.path.join(cache, f"b4p-{size}.pickle")
    if not os.path.isfile(b4p_path):
        from learning.transfer_feature_extraction import extract_features

        log(f"[bench] computing block4_pool features at {size} px into {b4p_path}")
        extract_features(os.path.join(dataset, "images"), b4p_path, weights, image_size=size,
                         layer="block4_pool", progress=False)
    names, b4p, params = load_features(b4p_path)
    b5c3_path = os.path.join(cache, f"b5c3-{size}.pickle")
    if os.path.isfile(b5c3_path):
        b5c3 = safe_pickle.load(b5c3_path, "block5_conv3 cache")["features"]
    else:
        b5c3 = frozen_block5(b4p, weights)
        safe_pickle.dump({"names": names, "features": b5c3, "params": params}, b5c3_path)
    # block5_pool = 2x2 max pool of block5_conv3: (N, 14, 14, 512) -> (N, 7, 7, 512)
    n, h, w, c = b5c3.shape
    b5p = b5c3.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    return {"b4p": b4p, "b5c3": b5c3, "b5p": b5p}, names, params


def block4_pool_448(dataset, weights, cache, names):
    """block4_pool features of 448-px inputs, (N, 28, 28, 512), in the order of `names`."""
    path = os.path.join(cache, "b4p-448.pickle")
    if not os.path.isfile(path):
        from learning.transfer_feature_extraction import extract_features

        log(f"[bench] computing block4_pool features at 448 px into {path}")
        extract_features(os.path.join(dataset, "images"), path, weights, image_size=448,
                         layer="block4_pool", progress=False)
    names_448, b4p, _ = load_features(path)
    index = {n: i for i, n in enumerate(names_448)}
    return b4p[[index[n] for n in names]]


def frozen_block5(b4p, weights):
    """ImageNet block5_conv1-3 applied to block4_pool features: (N, 14, 14, 512)."""
    import keras

    inputs = keras.Input(b4p.shape[1:])
    x = inputs
    for name, (kernel, bias) in zip(("c1", "c2", "c3"), block5_weights(weights)):
        layer = keras.layers.Conv2D(512, 3, padding="same", activation="relu", name=name)
        x = layer(x)
        layer.set_weights([kernel, bias])
    model = keras.Model(inputs, x)
    return np.asarray(model.predict(b4p, batch_size=32, verbose=0), np.float32)


# ----------------------------------------------------------------------------- maps

def conv_chain(head, feature_kind):
    """(features -> last conv output, last conv output -> logits) as keras models.

    For the grid heads the last conv is in the head; for v1 (block5_pool features) it is the
    frozen block5_conv3, whose output feeds a 2x2 max pool and then the head.
    """
    import keras

    if feature_kind == "b5p":
        grid = keras.Input((14, 14, 512))
        pooled = keras.layers.MaxPooling2D(2)(grid)
        return None, keras.Model(grid, head(pooled))
    conv = [layer for layer in head.layers if isinstance(layer, keras.layers.Conv2D)][-1]
    upper = keras.Model(conv.output, head.output)
    lower = keras.Model(head.input, conv.output)
    return lower, upper


def grid_maps(head, feature_kind, features, plus_plus=False):
    """Grad-CAM (or Grad-CAM++) on the last conv for the logit difference: (N, h, w) >= 0."""
    import tensorflow as tf

    lower, upper = conv_chain(head, feature_kind)
    grid = features if lower is None else np.asarray(lower(features))
    grid = tf.convert_to_tensor(grid, tf.float32)  # (N, h, w, C)
    with tf.GradientTape() as tape:
        tape.watch(grid)
        logits = upper(grid, training=False)
        score = logits[:, 1] - logits[:, 0]
    grads = tape.gradient(score, grid).numpy()  # (N, h, w, C)
    activations = grid.numpy()
    if plus_plus:
        # Chattopadhay et al. 2018, exponential-output closed form: alpha = g^2 / (2 g^2 +
        # sum(A) g^3); weights = sum over cells of alpha * relu(g).
        g2, g3 = grads ** 2, grads ** 3
        denominator = 2 * g2 + activations.sum(axis=(1, 2), keepdims=True) * g3
        alpha = np.where(denominator != 0, g2 / np.where(denominator != 0, denominator, 1), 0)
        weights = (alpha * np.maximum(grads, 0)).sum(axis=(1, 2), keepdims=True)
    else:
        weights = grads.mean(axis=(1, 2), keepdims=True)  # (N, 1, 1, C)
    return np.maximum((weights * activations).sum(-1), 0)


def occlusion_grid(head, features):
    """Drop of the logit difference when one feature-grid cell is zeroed: (N, h, w)."""
    n, h, w, _ = features.shape
    reference = _difference(head, features)
    result = np.zeros((n, h, w), np.float32)
    for i in range(h):
        for j in range(w):
            occluded = features.copy()
            occluded[:, i, j] = 0
            result[:, i, j] = reference - _difference(head, occluded)
    return result


def _difference(head, features):
    logits = np.asarray(head.predict(features, batch_size=64, verbose=0), np.float64)
    return logits[:, 1] - logits[:, 0]


def pixel_maps(head, feature_kind, weights, image_paths, method):
    """DeepLIFT (black / blur / mean baseline) or IG on the full image -> logit difference
    model, as stage 6 computes them: (N, 224, 224) signed maps, and completeness errors."""
    from learning.explain import attribution
    from learning.vgg import build_conv_base, load_image, preprocess

    layer = "block5_pool" if feature_kind == "b5p" else "block4_pool"
    base = build_conv_base(weights, image_size=MAP_SIZE, layer=layer)
    target = attribution.build_target_model(attribution.build_full_model(base, head),
                                            "difference")
    kind = "integrated-gradients" if method == "integrated-gradients" else "deeplift"
    baseline = "black" if kind != "deeplift" else method.split("-", 1)[1]
    attributor = attribution.Attributor(target, (kind,), ig_steps=16)
    maps, deltas = [], []
    for start in range(0, len(image_paths), 8):
        images = np.stack([load_image(p, MAP_SIZE) for p in image_paths[start:start + 8]])
        x = preprocess(images)
        b = attribution.preprocess_float(attribution.make_baselines(images, baseline, MAP_SIZE))
        raw, delta, _ = attributor.attribute(kind, x, b)
        maps.append(raw[..., 0])
        deltas.append(delta)
    return np.concatenate(maps), np.concatenate(deltas)


def resize_maps(maps, size=MAP_SIZE):
    """(N, h, w) -> (N, size, size), bilinear (as attribution.grad_cam upsamples)."""
    import tensorflow as tf

    maps = np.asarray(maps, np.float32)
    if maps.shape[1:] == (size, size):
        return maps
    return tf.image.resize(maps[..., None], (size, size), method="bilinear")[..., 0].numpy()


def score_maps(maps, boxes_list, n_resamples=1000, seed=0):
    """(N, 224, 224) maps vs boxes in 224-px coordinates -> (summary, ci summary).

    The ci summary also holds the paired per-image differences map - control (the same images)
    for the three controls of stage 6's verdict (learning/explain/verdict.py): "difference_vs"
    {"centred_gaussian", "lung_prior", "mean_map"} -> {"pointing", "inside_share"}, the mean
    map's own scores ("mean_map": the mean of these N maps, each positive part scaled to max 1,
    shown for every image), and "localizes" / "verdict". "minus_lung_prior" (every CI metric)
    is kept for the older rows of the results file."""
    per_image = [localization.image_metrics(m, b) for m, b in zip(maps, boxes_list)]
    mean_map = verdict.MeanMap(MAP_SIZE)
    for m in maps:
        mean_map.add(np.maximum(m, 0))
    controls = {"centred_gaussian": localization.gaussian_map((MAP_SIZE, MAP_SIZE)),
                "lung_prior": localization.lung_prior_map((MAP_SIZE, MAP_SIZE)),
                "mean_map": mean_map.mean()}
    scored = {key: [localization.image_metrics(c, b) for b in boxes_list]
              for key, c in controls.items()}
    ci = localization.summarize_with_ci(per_image, n_resamples=n_resamples, seed=seed)
    ci["minus_lung_prior"] = {
        key: localization.bootstrap_ci([float(m[key]) - float(p[key])
                                        for m, p in zip(per_image, scored["lung_prior"])],
                                       n_resamples, seed)
        for key in localization.CI_METRICS}
    ci["mean_map"] = localization.summarize_with_ci(scored["mean_map"],
                                                    n_resamples=n_resamples, seed=seed)
    ci["difference_vs"] = {key: verdict.compare(per_image, scored[key], seed) for key in controls}
    ci["localizes"], ci["verdict"] = verdict.verdict(ci["difference_vs"])
    return localization.summarize(per_image), ci


# ----------------------------------------------------------------------------- one run

def train_config(name, features, labels, part, names, seed, weights):
    """Train configuration `name` with `seed`; returns (head, feature kind, info, seconds)."""
    from learning.fully_connected_layers_training import train_head

    kind, preset, overrides = CONFIGS[name]
    config = dict(PRESETS[preset], head=preset, **overrides)
    subset = [part[n] for n in names]
    keep = np.array([s in ("train", "validation") for s in subset])
    training = {"features": features[kind][keep], "labels": labels[keep],
                "subset": [s for s in subset if s in ("train", "validation")]}
    conv_weights = block5_weights(weights) if preset == "block5" else None
    start = time.monotonic()
    head, info = train_head(training, config, seed, progress=False, conv_weights=conv_weights)
    return head, kind, info, time.monotonic() - start


def test_scores(head, features, part, names):
    """(test mask over names, logit differences of the test images): boxed + test-rest."""
    test = np.array([part[n] in ("boxed", "test-rest") for n in names])
    logits = np.asarray(head.predict(features[test], batch_size=64, verbose=0), np.float64)
    return test, logits[:, 1] - logits[:, 0]


def test_auroc(test, score, labels, groups, n_resamples, seed):
    """AUROC [grouped CI] on the test images (both classes)."""
    ci = grouped_bootstrap_auc(labels[test], score, np.asarray(groups)[test], n_resamples, seed)
    return {"auroc": roc_auc(labels[test], score), "low": ci["low"], "high": ci["high"],
            "n": int(test.sum()), "n_patients": ci["n_groups"]}


def ensemble(args, config, seeds, methods, labels, groups, boxes_224, results_path):
    """Seed ensemble: mean of the seeds' maps (each scaled to max 1) and of their test scores.

    Needs the maps of every seed (--save-maps); records method "<method> seed-ensemble"."""
    prefix = os.path.join(args.cache, f"{{}}-{config}-{{}}-s{{}}.npz")
    tests = [np.load(prefix.format("scores", "test", s)) for s in seeds]
    test = tests[0]["test"]
    score = np.mean([t["score"] for t in tests], axis=0)
    auroc = test_auroc(test, score, labels, groups, args.bootstrap, 0)
    for method in methods:
        stack = np.stack([np.load(prefix.format("maps", method, s))["maps"] for s in seeds])
        stack = np.maximum(stack, 0)  # (seeds, N, 224, 224) positive evidence
        peak = stack.max(axis=(2, 3), keepdims=True)
        maps = (stack / np.where(peak > 0, peak, 1)).mean(axis=0)
        summary, ci = score_maps(maps, boxes_224, args.bootstrap, 0)
        seed_text = "+".join(str(s) for s in seeds)
        record(results_path, {"config": config, "seed": seed_text,
                              "method": f"{method} seed-ensemble", "auroc": auroc, "ci": ci,
                              "summary": summary})
        log(f"[bench] {config} ensemble {seed_text} {method}: pointing "
            f"{ci_text(ci['pointing'])}, inside {ci_text(ci['inside_share'])}")


def explain(method, head, kind, features, weights, boxed_index, image_paths):
    """Maps (44, 224, 224) of one method on the boxed images, + completeness errors or None."""
    feats = features[kind][boxed_index]
    if method in ("grad-cam", "grad-cam++"):
        grid = features["b5c3"][boxed_index] if kind == "b5p" else feats
        return resize_maps(grid_maps(head, kind, grid, method == "grad-cam++")), None
    if method == "occlusion-grid":
        return resize_maps(occlusion_grid(head, feats)), None
    if kind == "b4p448":
        raise SystemExit(f"bench_localization: {method} is not run on the 448-px configuration "
                         f"(pixel methods rebuild the conv base at {MAP_SIZE} px); use grad-cam")
    maps, deltas = pixel_maps(head, kind, weights, image_paths, method)
    return maps, deltas


def record(results_path, entry):
    with open(results_path, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def load_results(results_path):
    if not os.path.isfile(results_path):
        return []
    with open(results_path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


# ----------------------------------------------------------------------------- report

def ci_text(ci):
    return localization.format_ci(ci)


def crop_baselines(boxes_224, n_resamples, rings=(1, 2, 3)):
    """The no-model control of the ring mask: a map uniform over the cells a ring-r head can
    see (pointing is undefined for a flat map, so only inside share and IoBB count)."""
    cell = MAP_SIZE // 14  # pixels per block4_pool cell at 224 px
    result = {}
    for ring in rings:
        flat = np.zeros((MAP_SIZE, MAP_SIZE))
        flat[ring * cell:MAP_SIZE - ring * cell, ring * cell:MAP_SIZE - ring * cell] = 1.0
        _, ci = score_maps(np.broadcast_to(flat, (len(boxes_224),) + flat.shape), boxes_224,
                           n_resamples)
        ci["pointing"] = {"mean": None}
        result[f"uniform inside ring {ring} (no model)"] = {"ci": ci}
    return result


def print_baselines(baselines):
    for key, title in [("centred_gaussian", "centred Gaussian (no model)"),
                       ("lung_prior", "lung-field prior (no model)")] + [
            (k, k) for k in baselines if k.startswith("uniform")]:
        ci = baselines[key]["ci"]
        print(f"{title:<48}{'-':<22}{ci_text(ci['pointing']):<22}"
              f"{ci_text(ci['inside_share']):<22}{ci_text(ci['iobb@0.5'])}")


def print_table(entries):
    """One row per (config, method, seed), then mean +- std over seeds per (config, method)."""
    print(f"{'configuration / method / seed':<48}{'test AUROC [CI]':<22}{'pointing [CI]':<22}"
          f"{'inside share [CI]':<22}IoBB@0.5 [CI]")
    groups = {}
    for e in entries:
        label = f"{e['config']} / {e['method']} / s{e['seed']}"
        a = e["auroc"]
        auc = f"{a['auroc']:.3f} [{a['low']:.3f}, {a['high']:.3f}]"
        ci = e["ci"]
        paired, own = ci.get("minus_lung_prior"), (ci.get("difference_vs") or {}).get("mean_map")
        versus = ("" if not paired else f"   vs prior: pointing {ci_text(paired['pointing'])}"
                  f", inside {ci_text(paired['inside_share'])}")
        versus += ("" if not own else f"   vs own mean map: pointing "
                   f"{ci_text(own['pointing'])}, inside {ci_text(own['inside_share'])} -> "
                   f"{'localizes' if ci['localizes'] else 'does not localize'}")
        print(f"{label:<48}{auc:<22}{ci_text(ci['pointing']):<22}"
              f"{ci_text(ci['inside_share']):<22}{ci_text(ci['iobb@0.5'])}{versus}")
        groups.setdefault((e["config"], e["method"]), []).append(e)
    print("\nmean +- std over seeds (n seeds)")
    for (config, method), runs in groups.items():
        if len(runs) < 2:
            continue
        cells = []
        for key in ("auroc",):
            values = [r["auroc"]["auroc"] for r in runs]
            cells.append(f"{np.mean(values):.3f} +- {np.std(values):.3f}")
        for key in ("pointing", "inside_share", "iobb@0.5"):
            values = [r["ci"][key]["mean"] for r in runs]
            cells.append(f"{np.mean(values):.3f} +- {np.std(values):.3f}")
        print(f"{config + ' / ' + method:<40}({len(runs)}) " + "   ".join(cells))


# ----------------------------------------------------------------------------- main

def get_args_parser():
    parser = argparse.ArgumentParser(
        description="Localization of the pipeline's heatmaps vs two no-model baselines, with an "
                    "ablation of head, features, attribution method and regularisation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("dataset", help="folder with images/, labels.csv and bboxes.csv")
    parser.add_argument("weights", help="VGG16 no-top weights (ImageNet, Keras layout)")
    parser.add_argument("cache", help="folder for feature caches and the results file")
    parser.add_argument("--configs", default="v1,cam,block5",
                        help=f"comma-separated, from: {', '.join(CONFIGS)}")
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help=f"comma-separated, from: {', '.join(METHODS)}")
    parser.add_argument("--seeds", default="0", help="comma-separated model seeds")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--save-maps", action="store_true",
                        help="also keep the maps (npz in the cache) for seed ensembles")
    parser.add_argument("--ensemble", action="store_true",
                        help="also score the mean map over --seeds (needs their --save-maps)")
    parser.add_argument("--report", action="store_true",
                        help="only print the table of what the results file holds")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    start = time.monotonic()
    configs = [c for c in args.configs.split(",") if c]
    methods = [m for m in args.methods.split(",") if m]
    for value, allowed, what in ((configs, CONFIGS, "configuration"), (methods, METHODS,
                                                                        "method")):
        bad = [v for v in value if v not in allowed]
        if bad:
            raise UserError(f"invalid {what} {bad[0]!r}; allowed: {', '.join(allowed)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    os.makedirs(args.cache, exist_ok=True)
    results_path = os.path.join(args.cache, "bench-localization.jsonl")
    rows, boxes = read_dataset(args.dataset)
    boxed_images = sorted(boxes)
    boxes_224 = [localization.scale_boxes(boxes[n], (512, 512), (MAP_SIZE, MAP_SIZE))
                 for n in boxed_images]  # nih-cxr-1000 images are 512 x 512
    baselines = localization.baseline_summaries(dict(zip(boxed_images, boxes_224)),
                                                (MAP_SIZE, MAP_SIZE), args.bootstrap)
    baselines.update(crop_baselines(boxes_224, args.bootstrap))
    if args.report:
        print_table(load_results(results_path))
        print_baselines(baselines)
        return 0
    part = make_split(rows, set(boxed_images))
    features, names, _ = feature_cache(args.dataset, args.weights, args.cache)
    if any(CONFIGS[c][0] == "b4p448" for c in configs):
        features["b4p448"] = block4_pool_448(args.dataset, args.weights, args.cache, names)
    by_name = {r["image"]: r for r in rows}
    labels = np.array([int(by_name[n]["abnormal"]) for n in names])
    groups = [by_name[n]["patient_id"] for n in names]
    index = {n: i for i, n in enumerate(names)}
    boxed_index = np.array([index[n] for n in boxed_images])
    image_paths = [os.path.join(args.dataset, "images", n) for n in boxed_images]
    counts = {p: sum(v == p for v in part.values()) for p in ("train", "validation",
                                                               "test-rest", "boxed")}
    log(f"[bench] split by patient: {counts}; {len(boxed_images)} boxed images")
    done = {(e["config"], e["seed"], e["method"]) for e in load_results(results_path)}
    for config in configs:
        for seed in seeds:
            todo = [m for m in methods if (config, seed, m) not in done or (
                args.save_maps and not os.path.isfile(os.path.join(
                    args.cache, f"maps-{config}-{m}-s{seed}.npz")))]
            scores_file = os.path.join(args.cache, f"scores-{config}-test-s{seed}.npz")
            if args.save_maps and not os.path.isfile(scores_file):
                todo = list(methods)  # the ensemble needs this seed's test scores too
            if not todo:
                continue
            head, kind, info, seconds = train_config(config, features, labels, part, names,
                                                     seed, args.weights)
            test, score = test_scores(head, features[kind], part, names)
            auroc = test_auroc(test, score, labels, groups, args.bootstrap, seed)
            if args.save_maps:
                np.savez_compressed(scores_file, test=test, score=score)
            log(f"[bench] {config} seed {seed}: trained {info['epochs_run']} epochs (kept "
                f"{info['best_epoch']}) in {seconds:.0f} s; test AUROC {auroc['auroc']:.3f}")
            for method in todo:
                step = time.monotonic()
                maps, deltas = explain(method, head, kind, features, args.weights,
                                       boxed_index, image_paths)
                if args.save_maps:
                    np.savez_compressed(os.path.join(
                        args.cache, f"maps-{config}-{method}-s{seed}.npz"), maps=maps)
                for variant, variant_maps in (("", maps), (" x lung prior", maps * np.maximum(
                        localization.lung_prior_map((MAP_SIZE, MAP_SIZE)), 0))):
                    summary, ci = score_maps(variant_maps, boxes_224, args.bootstrap, seed)
                    entry = {"config": config, "seed": seed, "method": method + variant,
                             "auroc": auroc, "ci": ci, "summary": summary,
                             "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"],
                             "train_seconds": round(seconds, 1),
                             "explain_seconds": round(time.monotonic() - step, 1),
                             "max_completeness_error": None if deltas is None
                             else float(np.max(deltas))}
                    if (config, seed, method + variant) not in done:
                        record(results_path, entry)
                    log(f"[bench] {config} s{seed} {method + variant}: pointing "
                        f"{ci_text(ci['pointing'])}, inside {ci_text(ci['inside_share'])}, "
                        f"IoBB@0.5 {ci_text(ci['iobb@0.5'])} ({elapsed_since(step)})")
    if args.ensemble:
        for config in configs:
            ensemble(args, config, seeds, methods, labels, groups, boxes_224, results_path)
    print_table([e for e in load_results(results_path) if e["config"] in configs])
    print_baselines(baselines)
    atomic_write_json(os.path.join(args.cache, "bench-localization-baselines.json"), baselines)
    log(f"[bench] done in {elapsed_since(start)}")
    return 0


if __name__ == "__main__":
    exit_with(main, "bench_localization")
