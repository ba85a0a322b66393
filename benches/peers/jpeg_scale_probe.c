/*
 * Probe for BENCHMARKS.md (ebv-pack): would a reduced-size JPEG decode
 * (libjpeg-turbo's DCT scaling, as Pillow's draft() and FFCV use) lift the
 * pack rate on ImageNet-like sizes? Decodes every file of DIR from memory
 * with the system's libjpeg-turbo (Debian libjpeg62-turbo-dev), at full size
 * or at the smallest M/8 scale that keeps both sides >= 224, and prints
 * images/s. Not part of ebv; the decoder ebv uses is zune-jpeg
 * (examples/decode_rate.rs).
 *
 *   gcc -O2 -o jpeg_scale_probe benches/peers/jpeg_scale_probe.c -ljpeg
 *   ./jpeg_scale_probe DIR SCALED(0|1)
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <jpeglib.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s DIR SCALED(0|1)\n", argv[0]);
        return 2;
    }
    int scaled = atoi(argv[2]), n = 0, cap = 1024;
    unsigned char **bufs = malloc(sizeof *bufs * cap);
    unsigned long *lens = malloc(sizeof *lens * cap);
    DIR *dir = opendir(argv[1]);
    if (!dir) {
        perror(argv[1]);
        return 2;
    }
    struct dirent *e;
    char path[4096];
    while ((e = readdir(dir))) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", argv[1], e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        fseek(f, 0, SEEK_END);
        long len = ftell(f);
        fseek(f, 0, SEEK_SET);
        if (n == cap) {
            cap *= 2;
            bufs = realloc(bufs, sizeof *bufs * cap);
            lens = realloc(lens, sizeof *lens * cap);
        }
        bufs[n] = malloc(len);
        lens[n] = fread(bufs[n], 1, len, f);
        fclose(f);
        n++;
    }
    closedir(dir);
    unsigned char *out = malloc((size_t)8192 * 8192 * 3);
    double px = 0, t0 = now();
    for (int i = 0; i < n; i++) {
        struct jpeg_decompress_struct c;
        struct jpeg_error_mgr err;
        c.err = jpeg_std_error(&err);
        jpeg_create_decompress(&c);
        jpeg_mem_src(&c, bufs[i], lens[i]);
        jpeg_read_header(&c, TRUE);
        c.out_color_space = JCS_RGB;
        if (scaled) {
            int m = 1;
            while (m < 8 && (c.image_width * m < 224 * 8 || c.image_height * m < 224 * 8)) m++;
            c.scale_num = m;
            c.scale_denom = 8;
        }
        jpeg_start_decompress(&c);
        while (c.output_scanline < c.output_height) {
            unsigned char *row = out + (size_t)c.output_scanline * c.output_width * 3;
            jpeg_read_scanlines(&c, &row, 1);
        }
        px += (double)c.output_width * c.output_height;
        jpeg_finish_decompress(&c);
        jpeg_destroy_decompress(&c);
    }
    double t = now() - t0;
    printf("{\"images\": %d, \"scaled\": %d, \"images_per_s\": %.1f, \"mpx_out_per_image\": %.3f}\n",
           n, scaled, n / t, px / 1e6 / n);
    return 0;
}
