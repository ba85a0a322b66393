/* jpegtran -arithmetic with chosen conditioning (DAC) values, which no
 * libjpeg tool sets: re-codes the coefficients of a Huffman JPEG on stdin
 * as arithmetic-coded on stdout, DC tables 0/1 with L0 U0 / L1 U1 and AC
 * tables 0/1 with K0 / K1; "prog" as a fifth argument makes it progressive.
 *
 *   cc -O2 -o arith_dac arith_dac.c -ljpeg     # Debian: libjpeg62-turbo-dev
 *   ./arith_dac L0 U0 L1 U1 K0 K1 [prog] < in.jpg > out.jpg
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>

int main(int argc, char **argv)
{
  struct jpeg_decompress_struct src;
  struct jpeg_compress_struct dst;
  struct jpeg_error_mgr jsrc, jdst;
  jvirt_barray_ptr *coefs;
  if (argc < 7) {
    fprintf(stderr, "usage: %s L0 U0 L1 U1 K0 K1 [prog]\n", argv[0]);
    return 2;
  }
  src.err = jpeg_std_error(&jsrc);
  jpeg_create_decompress(&src);
  dst.err = jpeg_std_error(&jdst);
  jpeg_create_compress(&dst);
  jpeg_stdio_src(&src, stdin);
  jpeg_read_header(&src, TRUE);
  coefs = jpeg_read_coefficients(&src);
  jpeg_copy_critical_parameters(&src, &dst);
  dst.arith_code = TRUE;
  dst.optimize_coding = FALSE;
  dst.arith_dc_L[0] = atoi(argv[1]);
  dst.arith_dc_U[0] = atoi(argv[2]);
  dst.arith_dc_L[1] = atoi(argv[3]);
  dst.arith_dc_U[1] = atoi(argv[4]);
  dst.arith_ac_K[0] = atoi(argv[5]);
  dst.arith_ac_K[1] = atoi(argv[6]);
  if (argc > 7 && strcmp(argv[7], "prog") == 0)
    jpeg_simple_progression(&dst);
  jpeg_stdio_dest(&dst, stdout);
  jpeg_write_coefficients(&dst, coefs);
  jpeg_finish_compress(&dst);
  jpeg_destroy_compress(&dst);
  jpeg_finish_decompress(&src);
  jpeg_destroy_decompress(&src);
  return 0;
}
