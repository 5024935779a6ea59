/* Stand-ins for the few C entry points the TensorRT Python bindings link against (libnvinfer,
 * libnvonnxparser, libnvinfer_plugin). Every factory returns NULL, so the bindings import and expose
 * their whole API while `trt.Builder(...)` / `trt.Runtime(...)` fail as on a host without a usable GPU.
 * Compiled once per TensorRT major version with that version's sonames; see harness.py. */
#include <stddef.h>

void *createInferBuilder_INTERNAL(void *logger, int version) { (void)logger; (void)version; return NULL; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { (void)engine; (void)logger; (void)version; return NULL; }
void *createInferRuntime_INTERNAL(void *logger, int version) { (void)logger; (void)version; return NULL; }
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { (void)network; (void)logger; (void)version; return NULL; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { (void)refitter; (void)logger; (void)version; return NULL; }
void *getBuilderPluginRegistry(int capability) { (void)capability; return NULL; }
int getNvOnnxParserVersion(void) { return 0; }
void *getPluginRegistry(void) { return NULL; }
int initLibNvInferPlugins(void *logger, const char *lib_namespace) { (void)logger; (void)lib_namespace; return 0; }
int getInferLibVersion(void) { return 0; }
