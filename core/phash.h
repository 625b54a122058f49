/* phash.h: perceptual hashes of gray images and a near-duplicate index (see phash.c).
 * Plain C on the project's own sl_image type; safe on any thread. */
#ifndef SLUICE_PHASH_H
#define SLUICE_PHASH_H

#include <stddef.h>
#include <stdint.h>

#include "av.h"

/* 64-bit difference hash: the image is box-averaged to 9x8 and bit i (row-major, first bit
 * the most significant) is set when a cell is brighter than its left neighbour. img must be
 * SL_IMG_GRAY8 (RGB24 is averaged to gray). Cannot fail. */
uint64_t sl_dhash(const sl_image *img);

/* 64-bit DCT hash: box-averaged to 32x32, 2-D DCT-II, the 8x8 lowest frequencies compared
 * with their median (bit set when above), first bit most significant. Cannot fail. */
uint64_t sl_phash(const sl_image *img);

/* Statistics of a grid of cols x rows cells over img (gray or RGB), for telling slides from
 * camera pictures and finding where a picture changed. The image is first box-averaged to
 * about 320 pixels wide (so the figures do not depend on the input's resolution); then, per
 * cell, row-major, three bytes: the mean gray level, its standard deviation (clipped to 255)
 * and the share of edge pixels (a step of at least 40 gray levels to the right or below
 * neighbour) scaled to 0..255. out holds cols * rows * 3 bytes. Returns 0, or -1 when out of
 * memory. */
int sl_cell_stats(const sl_image *img, int cols, int rows, uint8_t *out);

/* Number of differing bits. */
static inline int sl_hamming(uint64_t a, uint64_t b) { return __builtin_popcountll(a ^ b); }

/* A near-duplicate index: multi-index hashing over four 16-bit substrings. A hash within d
 * bits of a query agrees with it within floor(d/4) bits on at least one substring, so a query
 * probes every substring value within that radius in each of the four tables and checks the
 * candidates' full distance. Radii above 3 (d >= 16) scan linearly. */
typedef struct sl_hash_index sl_hash_index;

sl_hash_index *sl_hash_index_new(void); /* NULL when out of memory */
void sl_hash_index_free(sl_hash_index *ix);

/* Adds a hash; returns its position (0-based) or -1 when out of memory. */
long sl_hash_index_add(sl_hash_index *ix, uint64_t h);
long sl_hash_index_len(const sl_hash_index *ix);
uint64_t sl_hash_index_get(const sl_hash_index *ix, long pos);

/* Calls found(pos, distance, arg) for every stored hash within d bits of h, in no
 * particular order. Returns the number found. */
long sl_hash_index_near(sl_hash_index *ix, uint64_t h, int d,
                        void (*found)(long pos, int distance, void *arg), void *arg);

#endif
