"""Search strategies: HAT's evolutionary search and a random-search baseline.

Genomes follow HAT: per-layer genes exist for the largest layer count, and the layer-count
genes decide how many are active, so a genome keeps its hidden genes through mutation and
crossover. The strategies only propose; `nas.search.run_search` owns the loop.
"""
from __future__ import annotations

import random
from typing import Any

from nas.search import History, LatencyFilter, SearchSettings, Strategy
from profiler.errors import SearchError
from profiler.space import ArchConfig, DesignSpace
from profiler.vocabulary import DECODER_LAYER_GENES, ENCODER_LAYER_GENES, SCALAR_GENES

#: HAT's genome: every gene by name, per-layer genes padded to the space's largest layer count
#: (not `predictor.features.ArchArrays`, a batch of architectures as arrays).
Genome = dict[str, Any]


class _Genes:
    """Random genomes, mutation and crossover over one design space, from one seeded RNG."""

    def __init__(self, space: DesignSpace, rng: random.Random):
        self.space = space
        self.rng = rng
        self.layers = {g: max(space.encoder_layer_num) for g in ENCODER_LAYER_GENES}
        self.layers.update({g: max(space.decoder_layer_num) for g in DECODER_LAYER_GENES})
        self._genomes: dict[str, Genome] = {}

    def _draw(self, gene: str) -> int:
        return self.rng.choice(self.space.choices(gene))

    def random(self) -> Genome:
        genome: Genome = {g: self._draw(g) for g in SCALAR_GENES}
        genome.update({g: [self._draw(g) for _ in range(n)] for g, n in self.layers.items()})
        return genome

    def genome_of(self, arch: ArchConfig) -> Genome:
        """The genome `arch` came from, or its genes with random hidden genes if it is foreign."""
        known = self._genomes.get(arch.arch_id)
        if known is not None:
            return known
        genome: Genome = {g: getattr(arch, g) for g in SCALAR_GENES}
        for gene, n in self.layers.items():
            active = list(getattr(arch, gene))
            genome[gene] = active + [self._draw(gene) for _ in range(n - len(active))]
        return genome

    def to_arch(self, genome: Genome) -> ArchConfig:
        values = {g: genome[g] for g in SCALAR_GENES}
        values.update({g: genome[g][: genome["encoder_layer_num"]] for g in ENCODER_LAYER_GENES})
        values.update({g: genome[g][: genome["decoder_layer_num"]] for g in DECODER_LAYER_GENES})
        arch = ArchConfig(**values)
        self._genomes.setdefault(arch.arch_id, genome)
        return arch

    def mutate(self, genome: Genome, prob: float) -> Genome:
        child: Genome = {g: self._draw(g) if self.rng.random() < prob else genome[g] for g in SCALAR_GENES}
        for gene in self.layers:
            child[gene] = [self._draw(gene) if self.rng.random() < prob else v for v in genome[gene]]
        return child

    def crossover(self, a: Genome, b: Genome, prob: float) -> Genome:
        child: Genome = {g: a[g] if self.rng.random() < prob else b[g] for g in SCALAR_GENES}
        for gene in self.layers:
            child[gene] = [x if self.rng.random() < prob else y for x, y in zip(a[gene], b[gene])]
        return child


class EvolutionStrategy:
    """HAT's evolution: keep the best `parents`, add `mutations` and `crossovers` of them.

    The first generation is `population` random feasible architectures. By default the
    split follows HAT's 125 = 25 parents + 50 mutations + 50 crossovers.
    """

    name = "evolution"

    def __init__(self, space: DesignSpace, population: int = 125, parents: int | None = None,
                 mutations: int | None = None, crossovers: int | None = None,
                 mutation_prob: float = 0.3, crossover_prob: float = 0.5, seed: int = 0):
        parents = round(population / 5) if parents is None else parents
        mutations = round(population * 2 / 5) if mutations is None else mutations
        crossovers = population - parents - mutations if crossovers is None else crossovers
        if min(parents, mutations, crossovers) < 0 or parents < 1 or population < 1:
            raise SearchError(f"population {population} cannot hold {parents} parents, {mutations} "
                              f"mutations and {crossovers} crossovers")
        if not (0 <= mutation_prob <= 1 and 0 <= crossover_prob <= 1):
            raise SearchError("mutation and crossover probabilities must lie in [0, 1]")
        self.population, self.parents = population, parents
        self.mutations, self.crossovers = mutations, crossovers
        self.mutation_prob, self.crossover_prob = mutation_prob, crossover_prob
        self._genes = _Genes(space, random.Random(seed))

    @classmethod
    def from_settings(cls, space: DesignSpace, settings: SearchSettings) -> "EvolutionStrategy":
        return cls(space, population=settings.population, mutation_prob=settings.mutation_prob,
                   crossover_prob=settings.crossover_prob, seed=settings.seed)

    def ask(self, history: History, feasible: LatencyFilter) -> list[ArchConfig]:
        genes = self._genes
        last = history.last_generation
        if not last:
            return feasible.fill(lambda k: [genes.to_arch(genes.random()) for _ in range(k)], self.population)
        ranked = sorted(range(len(last)), key=lambda i: (last[i].loss, i))
        parents = [last[i].arch for i in ranked[: self.parents]]
        pool = [genes.genome_of(a) for a in parents]

        def mutants(k: int) -> list[ArchConfig]:
            return [genes.to_arch(genes.mutate(genes.rng.choice(pool), self.mutation_prob)) for _ in range(k)]

        def children(k: int) -> list[ArchConfig]:
            return [genes.to_arch(genes.crossover(genes.rng.choice(pool), genes.rng.choice(pool),
                                                  self.crossover_prob)) for _ in range(k)]

        out = list(parents)
        if self.mutations:
            out += feasible.fill(mutants, self.mutations)
        if self.crossovers:
            out += feasible.fill(children, self.crossovers)
        return out


class RandomStrategy:
    """The baseline: every generation is `population` fresh random feasible architectures."""

    name = "random"

    def __init__(self, space: DesignSpace, population: int = 125, seed: int = 0):
        self.population = population
        self._genes = _Genes(space, random.Random(seed))

    @classmethod
    def from_settings(cls, space: DesignSpace, settings: SearchSettings) -> "RandomStrategy":
        return cls(space, population=settings.population, seed=settings.seed)

    def ask(self, history: History, feasible: LatencyFilter) -> list[ArchConfig]:
        genes = self._genes
        return feasible.fill(lambda k: [genes.to_arch(genes.random()) for _ in range(k)], self.population)


#: The search strategies by name; each builds itself from a space and `SearchSettings`.
STRATEGIES = {cls.name: cls for cls in (EvolutionStrategy, RandomStrategy)}


def make_strategy(space: DesignSpace, settings: SearchSettings) -> Strategy:
    """The strategy `settings.strategy` over `space`, seeded by `settings.seed`."""
    try:
        cls = STRATEGIES[settings.strategy]
    except KeyError:
        raise SearchError(f"unknown search strategy {settings.strategy!r} (known: {', '.join(STRATEGIES)})") from None
    return cls.from_settings(space, settings)
