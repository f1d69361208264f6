#!/usr/bin/env python3
"""Refits grid_codec's PROBE_MAP: for each lambda, least squares of a full fit's ln bpp (and
PSNR) on a 100-step probe's, over the images of two `inr rd` reports, and compares with the
committed map. Usage: scripts/probe_map_fit.py PROBE_REPORT_DIR FULL_REPORT_DIR

The reports come from
    inr --threads 2 rd kodim01-12/ -o PROBE --no-presets --grid-lambdas 0.01,0.00366,0.00135 --grid-fit-steps 100
    inr --threads 2 rd kodim01-12/ -o FULL --no-presets --grid-lambdas 0.01,0.00366,0.00135
"""
import sys
import csv, math, glob, os
def load(d):
    out={}
    for f in sorted(glob.glob(d+'/kodim*.csv')):
        im=os.path.basename(f)[:-4]
        for r in csv.DictReader(open(f)):
            if r['codec']=='inr-grid':
                out[(im, r['param'])]=(float(r['bpp']), float(r['psnr']))
    return out
P=load(sys.argv[1]); F=load(sys.argv[2])
old={'rate':{'l0.01':(0.275,1.132),'l0.00366':(0.308,1.226),'l0.00135':(-0.239,1.110)},
     'psnr':{'l0.01':(4.417,0.868),'l0.00366':(8.373,0.758),'l0.00135':(2.730,0.940)}}
def ls(xs, ys):
    n=len(xs); mx=sum(xs)/n; my=sum(ys)/n
    b=sum((x-mx)*(y-my) for x,y in zip(xs,ys))/sum((x-mx)**2 for x in xs)
    return my-b*mx, b
for lam in ['l0.01','l0.00366','l0.00135']:
    keys=sorted(k for k in P if k[1]==lam and k in F)
    for kind,idx,tr in [('rate',0,math.log),('psnr',1,lambda v:v)]:
        xs=[tr(P[k][idx]) for k in keys]; ys=[tr(F[k][idx]) for k in keys]
        a,b=ls(xs,ys)
        rms=lambda a,b: math.sqrt(sum((a+b*x-y)**2 for x,y in zip(xs,ys))/len(xs))
        oa,ob=old[kind][lam]
        bias=sum(oa+ob*x-y for x,y in zip(xs,ys))/len(xs)
        print(f"{lam} {kind}: n={len(keys)} new a={a:.3f} b={b:.3f} rms {rms(a,b):.3f}; old rms {rms(oa,ob):.3f}, old bias (pred-actual) {bias:+.3f}")
