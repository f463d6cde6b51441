// The bf16 GEMM kernel (Sources/CLoomKernels/GEMMBF16.c) against oneDNN's sgemm on one thread, at
// the shapes of the reference workloads (each thread's piece of them at 2 threads), each
// checked against sgemm on the same bf16 values first. Hot caches: an upper bound on what a
// training step sees.
//
//   K=Sources/CLoomKernels; CC=/opt/swift/usr/bin/clang
//   $CC -O3 -I$K/include -I$K bench/bf16_gemm.c $K/GEMMBF16.c $K/Dispatch.c -ldnnl -lgomp -lm -o /tmp/bf16_gemm
//   /tmp/bf16_gemm
#include "LoomKernels.h"
#include <dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <math.h>
void omp_set_num_threads(int);  // libgomp's (oneDNN runs on it)
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static uint16_t tobf(float f){uint32_t b;memcpy(&b,&f,4);return (b+0x7fff+((b>>16)&1))>>16;}
static float fromb(uint16_t h){uint32_t b=(uint32_t)h<<16;float f;memcpy(&f,&b,4);return f;}
static void run(int ta,int tb,int m,int n,int k,float beta){
  int lda = ta? m:k, ldb = tb? k:n, ldc=n;
  size_t sa=(size_t)m*k, sb=(size_t)k*n;
  uint16_t*a=malloc(sa*2),*b=malloc(sb*2); float*af=malloc(sa*4),*bf=malloc(sb*4),*c=malloc((size_t)m*n*4),*r=malloc((size_t)m*n*4),*c0=malloc((size_t)m*n*4);
  for(size_t i=0;i<sa;i++){a[i]=tobf((rand()/(float)RAND_MAX)-0.5f);af[i]=fromb(a[i]);}
  for(size_t i=0;i<sb;i++){b[i]=tobf((rand()/(float)RAND_MAX)-0.5f);bf[i]=fromb(b[i]);}
  for(size_t i=0;i<(size_t)m*n;i++){c0[i]=rand()/(float)RAND_MAX;}
  memcpy(r,c0,(size_t)m*n*4); memcpy(c,c0,(size_t)m*n*4);
  dnnl_sgemm(ta?'T':'N',tb?'T':'N',m,n,k,0.5f,af,lda,bf,ldb,beta,r,ldc);
  if(!loom_bf16_gemm(ta,tb,m,n,k,0.5f,a,lda,b,ldb,beta,c,ldc,NULL)){printf("no bf16\n");exit(1);}
  double err=0; for(size_t i=0;i<(size_t)m*n;i++){double e=fabs(c[i]-r[i]); if(e>err)err=e;}
  int it = (int)(2e9/(2.0*m*n*k)); if(it<3)it=3;
  double best1=1e9,best2=1e9;
  for(int rep=0;rep<5;rep++){
    double t=now(); for(int i=0;i<it;i++) loom_bf16_gemm(ta,tb,m,n,k,0.5f,a,lda,b,ldb,beta,c,ldc,NULL); t=(now()-t)/it; if(t<best1)best1=t;
    t=now(); for(int i=0;i<it;i++) dnnl_sgemm(ta?'T':'N',tb?'T':'N',m,n,k,0.5f,af,lda,bf,ldb,beta,r,ldc); t=(now()-t)/it; if(t<best2)best2=t;
  }
  double f=2.0*m*n*k;
  printf("%c%c m=%5d n=%5d k=%5d  bf16 %6.1f GF  sgemm %6.1f GF  ratio %.2f  maxerr %.2e\n",ta?'T':'N',tb?'T':'N',m,n,k,f/best1/1e9,f/best2/1e9,best2/best1,err);
  free(a);free(b);free(af);free(bf);free(c);free(r);free(c0);
}
int main(){
  omp_set_num_threads(1);
  run(0,0,256,256,256,0); run(0,1,100,37,33,1); run(1,0,45,70,513,0.5f); run(1,1,29,47,17,0);
  // GPT (per thread: 1024 rows) forward: x·Wᵀ
  run(0,1,1024,384,128,1); run(0,1,1024,128,128,1); run(0,1,1024,512,128,1); run(0,1,1024,128,512,1); run(0,1,1024,256,128,0);
  // dX = dY·W
  run(0,0,1024,128,384,0); run(0,0,1024,128,512,0); run(0,0,1024,512,128,0);
  // dW = dYᵀ·X (split by rows of C: out/2)
  run(1,0,192,128,2048,0); run(1,0,64,128,2048,0); run(1,0,256,128,2048,0); run(1,0,64,512,2048,0);
  // mlp per thread (64 rows)
  run(0,1,64,512,784,1); run(0,1,64,512,512,1); run(0,0,64,784,512,0); run(1,0,256,784,128,0); run(1,0,256,512,128,0);
  // attention batched per head: 128x32 · 32x128, 128x128 · 128x32
  run(0,1,128,128,32,0); run(0,0,128,32,128,0);
  return 0;
}
