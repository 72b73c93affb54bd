// ftl: resize a rectangle of an RGB image with OpenCV (part of the library native.py builds), optionally writing
// the result planar (3 x H x W). After the crop decoder's DCT scaling (M/8) the rectangle is less than twice the
// output size, where plain bilinear (no antialias filter; torchvision's default adds one) aliases little and is ~5x
// faster than the INTER_AREA filter FFCV's resize_crop always uses (raw pixels, not DCT-scaled, still use AREA).
// Planar output lets the device augmentation convert to float NCHW without a transposing copy.
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

extern "C" void ftl_resize(const unsigned char *src, int rows, int cols, int y0, int y1, int x0, int x1,
                           unsigned char *dst, int out_h, int out_w, int interpolation, int planar) {
    const cv::Mat source(rows, cols, CV_8UC3, const_cast<unsigned char *>(src));
    const cv::Mat rect = source(cv::Range(y0, y1), cv::Range(x0, x1));
    if (!planar) {
        cv::Mat dest(out_h, out_w, CV_8UC3, dst);
        cv::resize(rect, dest, dest.size(), 0, 0, interpolation);
        return;
    }
    thread_local cv::Mat resized;  // per loader thread: no allocation per image
    cv::resize(rect, resized, cv::Size(out_w, out_h), 0, 0, interpolation);
    const size_t plane = (size_t)out_h * out_w;
    cv::Mat planes[3] = {cv::Mat(out_h, out_w, CV_8UC1, dst), cv::Mat(out_h, out_w, CV_8UC1, dst + plane),
                         cv::Mat(out_h, out_w, CV_8UC1, dst + 2 * plane)};
    cv::split(resized, planes);
}
