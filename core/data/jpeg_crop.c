/* ftl's JPEG crop decoder: decode only a crop of a JPEG, at the smallest libjpeg DCT scale M/8 (M = 1, 2, 4 or 8)
 * that keeps the crop at least as large as the output. Rows below the crop are never read; rows above it and
 * columns beside it are entropy-decoded (Huffman data cannot be skipped) but not IDCT'd, upsampled or converted.
 *
 * Built and loaded by core/data/native.py (ctypes; called from numba code in core/data/ffcv_decode.py).
 *
 * libjpeg-turbo 2.1.5 (Debian's libjpeg62-turbo): jpeg_crop_scanline and jpeg_skip_scanlines were checked at every
 * scale M/8, with 4:4:4, 4:2:2, 4:2:0 (OpenCV's default, so FFCV's writer's), progressive, restart markers and
 * greyscale: the wanted rectangle is bit-identical to the same rectangle of a full decode at the same scale
 * (tests/core/test_ffcv_decode.py), given the workaround for the cropped row's edge columns below. We only ever skip
 * from scanline 0 and never to the end of the image (rows below the crop are dropped by jpeg_abort_decompress),
 * which keeps clear of the library's known skip issues (skips starting mid row group, skips to the end, merged
 * upsampling: fancy upsampling stays on).
 */
#include <setjmp.h>
#include <stdio.h> /* jpeglib.h needs FILE */

#include <jpeglib.h>

enum { FTL_OK = 0, FTL_ERR_JPEG = -1, FTL_ERR_CROP = -2, FTL_ERR_BUFFER = -3, FTL_ERR_INIT = -4 };

struct ftl_err {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
};

/* libjpeg's default error_exit calls exit(): jump back to ftl_decode_crop instead. */
static void on_error(j_common_ptr c) { longjmp(((struct ftl_err *)c->err)->jump, 1); }
/* Warnings (corrupt data the decoder works around) must not print from the loader's threads. */
static void on_emit(j_common_ptr c, int level) { (void)c; (void)level; }
static void on_output(j_common_ptr c) { (void)c; }

/* One decompressor per thread, reused across images (no per-image object creation and permanent-pool set-up).
 * It is re-created after an error (its state is then unknown). */
static __thread struct jpeg_decompress_struct t_cinfo;
static __thread struct ftl_err t_err;
static __thread int t_ready;

static int round_scaled(long v, int m) { return (int)((v * m + 4) / 8); } /* v * m/8, to nearest */

int ftl_decode_crop(const unsigned char *src, unsigned long size, int crop_y, int crop_x, int crop_h, int crop_w,
                    int out_h, int out_w, unsigned char *buf, long buf_cap, int *geom) {
    struct jpeg_decompress_struct *ci = &t_cinfo;
    int m, x0, x1, y0, y1, rows;
    JDIMENSION xoff, width;

    if (!t_ready) {
        ci->err = jpeg_std_error(&t_err.pub);
        t_err.pub.error_exit = on_error;
        t_err.pub.emit_message = on_emit;
        t_err.pub.output_message = on_output;
        if (setjmp(t_err.jump)) return FTL_ERR_INIT;
        jpeg_create_decompress(ci);
        t_ready = 1;
    }
    if (setjmp(t_err.jump)) {
        jpeg_destroy_decompress(ci);
        t_ready = 0;
        return FTL_ERR_JPEG;
    }
    jpeg_mem_src(ci, src, size);
    jpeg_read_header(ci, TRUE);
    if (crop_h <= 0 || crop_w <= 0 || crop_y < 0 || crop_x < 0 || (long)crop_y + crop_h > (long)ci->image_height ||
        (long)crop_x + crop_w > (long)ci->image_width || out_h <= 0 || out_w <= 0) {
        jpeg_abort_decompress(ci);
        return FTL_ERR_CROP;
    }
    ci->out_color_space = JCS_RGB; /* greyscale (and YCbCr) JPEGs come out as RGB */
    ci->dct_method = JDCT_IFAST;   /* FFCV's stock decoder uses TJFLAG_FASTDCT */

    /* Smallest M in {1, 2, 4} with the scaled crop still >= the output, else M = 8 (no scaling). Only these: the
     * entropy decoding (which no scale skips) dominates, and libjpeg-turbo's odd-size scaled IDCTs are plain C while
     * the 8x8 one is SIMD. A whole 216 px q90 photo took 122/142/173/154/241/274/340/182 us at M = 1..8: M = 5..7
     * are slower than no scaling, M = 3 saves little. */
    for (m = 1; m < 8; m *= 2)
        if ((long)crop_w * m >= 8L * out_w && (long)crop_h * m >= 8L * out_h) break;
    ci->scale_num = (unsigned int)m;
    ci->scale_denom = 8;
    jpeg_start_decompress(ci);

    /* The crop in scaled pixels, edges rounded to nearest, at least one pixel, inside the scaled image. */
    x0 = round_scaled(crop_x, m);
    x1 = round_scaled((long)crop_x + crop_w, m);
    y0 = round_scaled(crop_y, m);
    y1 = round_scaled((long)crop_y + crop_h, m);
    if (x1 > (int)ci->output_width) x1 = (int)ci->output_width;
    if (y1 > (int)ci->output_height) y1 = (int)ci->output_height;
    if (x0 >= x1) x0 = x1 - 1;
    if (y0 >= y1) y0 = y1 - 1;

    /* jpeg_crop_scanline moves xoff left to an iMCU column boundary and widens width to match. With horizontally
     * subsampled chroma (4:2:2, and 4:2:0 at M = 8) the fancy upsampler treats the cropped row's first and last
     * columns as image edges, so they differ from a full decode (by up to ~27 levels): ask for one more column on
     * each side (inside the image) so the wanted columns are never the decoded row's edges. And at least 4
     * columns: below 2 chroma samples a row the library swaps in a plain (non-fancy) upsampler. */
    {
        int left = x0 > 0 ? x0 - 1 : 0, right = x1 < (int)ci->output_width ? x1 + 1 : x1;
        if (right - left < 4) {
            right = left + 4 < (int)ci->output_width ? left + 4 : (int)ci->output_width;
            left = right - 4 > 0 ? right - 4 : 0;
        }
        xoff = (JDIMENSION)left;
        width = (JDIMENSION)(right - left);
    }
    jpeg_crop_scanline(ci, &xoff, &width);
    rows = y1 - y0;
    if ((long)rows * (long)width * 3 > buf_cap) {
        jpeg_abort_decompress(ci);
        return FTL_ERR_BUFFER;
    }
    if (y0 > 0 && jpeg_skip_scanlines(ci, (JDIMENSION)y0) != (JDIMENSION)y0) {
        jpeg_abort_decompress(ci);
        return FTL_ERR_JPEG;
    }
    {
        JSAMPROW ptrs[16];
        int done = 0, i, n;
        while (done < rows) {
            n = rows - done < 16 ? rows - done : 16;
            for (i = 0; i < n; i++) ptrs[i] = buf + (long)(done + i) * width * 3;
            n = (int)jpeg_read_scanlines(ci, ptrs, (JDIMENSION)n);
            if (n <= 0) { /* suspension cannot happen with a memory source; stop rather than loop */
                jpeg_abort_decompress(ci);
                return FTL_ERR_JPEG;
            }
            done += n;
        }
    }
    jpeg_abort_decompress(ci); /* the rows below the crop are never decoded; the object is ready for reuse */

    geom[0] = rows;
    geom[1] = (int)width;
    geom[2] = x0 - (int)xoff;
    geom[3] = x1 - x0;
    geom[4] = y1 - y0;
    return FTL_OK;
}
