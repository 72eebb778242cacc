// Registration of `IGCSGDMomUpdate` with MXNet's extension API: SGD with momentum over many
// float32 arrays in one call (training/optim.py's IGCSGD). Inputs weight_0, grad_0, mom_0,
// weight_1, ... (MXNet's multi_sgd_mom_update order); outputs the new weights (the caller passes
// out=weights); the momenta are updated in place (mutable inputs). Attributes: num_weights, lrs
// and wds (one per array), momentum, rescale_grad (1), clip_gradient (-1: none).
#include <mxnet/lib_api.h>

#include <string>
#include <vector>

#include "op_common.h"
#include "sgd.h"

namespace {

using igc::Attrs;
using igc::Shape;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;
using mxnet::ext::OpResource;

const char kOp[] = "IGCSGDMomUpdate";

bool float_attr(const Attrs& attrs, const char* name, bool required, float* value) {
  const auto it = attrs.find(name);
  if (it == attrs.end()) {
    if (required) IGC_ERROR << kOp << ": required attribute '" << name << "' is missing";
    return !required;
  }
  if (!igc::parse_float(it->second, value)) {
    IGC_ERROR << kOp << ": attribute '" << name << "' must be a number, got '" << it->second
              << "'";
    return false;
  }
  return true;
}

// "(a, b, ...)", "[a, b, ...]" or "a, b, ..." (see igc::parse_list) with exactly `count` numbers.
bool float_list_attr(const Attrs& attrs, const char* name, int64_t count,
                     std::vector<float>* values) {
  const auto it = attrs.find(name);
  if (it == attrs.end()) {
    IGC_ERROR << kOp << ": required attribute '" << name << "' is missing";
    return false;
  }
  if (!igc::parse_list(it->second, igc::parse_float, values)) {
    IGC_ERROR << kOp << ": attribute '" << name << "' must be a list of numbers, got '"
              << it->second << "'";
    return false;
  }
  if (static_cast<int64_t>(values->size()) != count) {
    IGC_ERROR << kOp << ": attribute '" << name << "' has " << values->size()
              << " values for num_weights=" << count;
    return false;
  }
  return true;
}

struct Params {
  int64_t num_weights = 0;
  std::vector<float> lrs, wds;
  float momentum = 0.0f, rescale_grad = 1.0f, clip_gradient = -1.0f;
};

bool parse_params(const Attrs& attrs, Params* p) {
  return igc::check_known_attrs(kOp, attrs, {"num_weights", "lrs", "wds", "momentum",
                                             "rescale_grad", "clip_gradient"}) &&
         igc::parse_count_attr(kOp, attrs, "num_weights", true, &p->num_weights) &&
         float_list_attr(attrs, "lrs", p->num_weights, &p->lrs) &&
         float_list_attr(attrs, "wds", p->num_weights, &p->wds) &&
         float_attr(attrs, "momentum", true, &p->momentum) &&
         float_attr(attrs, "rescale_grad", false, &p->rescale_grad) &&
         float_attr(attrs, "clip_gradient", false, &p->clip_gradient);
}

MXReturnValue parse(const Attrs& attrs, int* num_in, int* num_out) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  *num_in = static_cast<int>(3 * p.num_weights);
  *num_out = static_cast<int>(p.num_weights);
  return MX_SUCCESS;
}

MXReturnValue mutate(const Attrs& attrs, std::vector<int>* indices) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  for (int64_t i = 0; i < p.num_weights; ++i) indices->push_back(static_cast<int>(3 * i + 2));
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs&, std::vector<int>* in_types, std::vector<int>* out_types) {
  for (size_t i = 0; i < in_types->size(); ++i) {
    int& t = in_types->at(i);
    if (t != -1 && t != igc::kFloat32) {
      IGC_ERROR << kOp << ": input " << i << " is " << igc::dtype_name(t)
                << "; every weight, gradient and momentum must be float32";
      return MX_FAIL;
    }
    t = igc::kFloat32;
  }
  for (int& t : *out_types) t = igc::kFloat32;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const Attrs&, std::vector<Shape>* in_shapes,
                          std::vector<Shape>* out_shapes) {
  static const char* const kRole[] = {"weight", "gradient", "momentum"};
  for (size_t i = 0; i < out_shapes->size(); ++i) {
    const Shape& weight = in_shapes->at(3 * i);
    for (size_t r = 1; r < 3; ++r) {
      Shape& s = in_shapes->at(3 * i + r);
      if (s.empty()) {
        s = weight;
      } else if (s != weight) {
        IGC_ERROR << kOp << ": " << kRole[r] << " " << i << " has shape "
                  << igc::shape_string(s) << " but weight " << i << " has "
                  << igc::shape_string(weight);
        return MX_FAIL;
      }
    }
    out_shapes->at(i) = weight;
  }
  return MX_SUCCESS;
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource&) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  std::vector<igc::SgdArray> arrays;
  arrays.reserve(p.num_weights);
  for (int64_t i = 0; i < p.num_weights; ++i) {
    MXTensor& w = inputs->at(3 * i);
    MXTensor& g = inputs->at(3 * i + 1);
    MXTensor& m = inputs->at(3 * i + 2);
    MXTensor& out = outputs->at(i);
    if (w.ctx.dev_type != "cpu") {
      IGC_ERROR << kOp << ": only a CPU kernel is built; got a tensor on " << w.ctx.dev_type;
      return MX_FAIL;
    }
    if (g.size() != w.size() || m.size() != w.size() || out.size() != w.size()) {
      IGC_ERROR << kOp << ": array " << i << "'s weight, gradient, momentum and output differ "
                << "in size";
      return MX_FAIL;
    }
    arrays.push_back({static_cast<const float*>(w.data_ptr), static_cast<const float*>(g.data_ptr),
                      static_cast<float*>(m.data_ptr), static_cast<float*>(out.data_ptr),
                      static_cast<int64_t>(w.size()), p.lrs[i], p.wds[i]});
  }
  igc::sgd_mom_update_cpu(arrays, p.momentum, p.rescale_grad, p.clip_gradient);
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(IGCSGDMomUpdate)
    .setParseAttrs(parse)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setMutateInputs(mutate)
    .setForward(forward, "cpu");
